"""Scene stage, SFX lists: a YAML or JSON list of one-shots -> a validated ``SfxList``.

Input: the list file (``name``, ``defaults``, ``ucs``, ``sounds: [{name, prompt, duration,
variations, seed, ucs}]``). Output: frozen pydantic values, or one ``file:line`` error per problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import SceneError
from . import (
    DEFAULT_MODEL,
    NAME_PATTERN,
    Ceiling,
    Decibels,
    Loudness,
    PositiveDuration,
    format_errors,
    ucs,
    yamlsrc,
)


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SfxDefaults(_M):
    duration: PositiveDuration = Field(2.0, description="Take length before trimming.")
    variations: int = Field(4, ge=1, le=64, description="Variations per sound.")
    loudness: Loudness = Field(-14.0, description="Loudness of each variation (LUFS).")
    ceiling: Ceiling = Field(-1.0, description="True-peak ceiling (dBTP).")
    max_limiting: Decibels = Field(
        6.0, ge=0.0, le=60.0,
        description="The most the limiter may reduce a variation's peaks to reach the loudness "
        "(dB, e.g. '6 dB'), as the master's max_limiting. Past it the make-up gain stops and "
        "the file is warned about with the loudness it reached, rather than crushed flat.")
    trim_threshold: Decibels = Field(-50.0, description="Silence threshold for trimming, dB "
                                     "below the sound's peak.")
    temperature: float = Field(1.0, gt=0, le=5)
    top_k: int = Field(250, ge=0)
    top_p: float = Field(0.0, ge=0, le=1)
    cfg_coef: float = Field(3.0, ge=0, le=30)


class UcsList(_M):
    """UCS naming for every sound of a list (each sound may override a field)."""

    category: str | None = Field(None, description="UCS CatID, e.g. DOORWood.")
    creator: str | None = Field(None, description="UCS CreatorID (default: SNDSCP).")
    source: str | None = Field(None, description="UCS SourceID (default: the list's name).")

    @field_validator("category")
    @classmethod
    def _category(cls, v: str | None) -> str | None:
        problem = None if v is None else ucs.catid_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("creator", "source")
    @classmethod
    def _ids(cls, v: str | None, info: Any) -> str | None:
        block = "CreatorID" if info.field_name == "creator" else "SourceID"
        problem = None if v is None else ucs.id_problem(block, v)
        if problem:
            raise ValueError(problem)
        return v


class UcsSound(UcsList):
    """A sound's UCS fields; ``name`` is its FXName (default: from the sound's name)."""

    name: str | None = Field(None, description="UCS FXName, e.g. 'Creak Open' (25 characters "
                             "at most).")

    @field_validator("name")
    @classmethod
    def _fxname(cls, v: str | None) -> str | None:
        problem = None if v is None else ucs.fxname_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class Sound(_M):
    name: str = Field(pattern=NAME_PATTERN)
    prompt: str = Field(min_length=1)
    duration: PositiveDuration | None = None
    variations: int | None = Field(None, ge=1, le=64)
    seed: int | None = Field(None, ge=0)
    loudness: Loudness | None = None
    ucs: UcsSound | None = None


class SfxList(_M):
    name: str = Field(pattern=NAME_PATTERN)
    model: str = DEFAULT_MODEL
    commercial: bool = Field(False, description="Refuse models whose licence forbids "
                             "commercial use, as --commercial.")
    seed: int = Field(0, ge=0)
    defaults: SfxDefaults = Field(default_factory=lambda: SfxDefaults())
    ucs: UcsList | None = None
    sounds: list[Sound] = Field(min_length=1)


@dataclass(frozen=True)
class Ucs:
    """A sound's resolved UCS blocks."""

    category: str
    fxname: str
    creator: str
    source: str

    @property
    def name(self) -> str:
        return ucs.ucs_name(self.category, self.fxname, self.creator, self.source)


def sound_ucs(lst: SfxList, s: Sound) -> Ucs | None:
    """The sound's UCS blocks (its own fields over the list's), None without UCS naming;
    ValueError naming the field when the result is not a valid UCS name."""
    if lst.ucs is None and s.ucs is None:
        return None
    own = s.ucs or UcsSound()
    common = lst.ucs or UcsList()
    category = own.category or common.category
    if category is None:
        raise ValueError("ucs: no category (CatID); add e.g. 'category: DOORWood' to the "
                         "sound's ucs or to the list's")
    fxname = own.name or ucs.default_fxname(s.name)
    problem = ucs.fxname_problem(fxname)
    if problem is not None:
        raise ValueError(f"ucs: the FXName made from the sound's name: {problem}; set "
                         f"ucs.name")
    source = own.source or common.source or ucs.default_source(lst.name)
    return Ucs(category, fxname, own.creator or common.creator or ucs.CREATOR_DEFAULT, source)


def variation_file(lst: SfxList, s: Sound, seed: int, fmt: str) -> str:
    """A variation's path in the list's folder: ``<sound>/<sound>-seed<seed>.<fmt>``, or with
    UCS ``<sound>/<CatID>_<FXName>_<CreatorID>_<SourceID>_seed<seed>.<fmt>`` (the seed is UCS's
    UserData block, so the SourceID reads the same for every variation)."""
    u = sound_ucs(lst, s)
    if u is None:
        return f"{s.name}/{s.name}-seed{seed}.{fmt}"
    return f"{s.name}/{u.name}_seed{seed}.{fmt}"


def load_sfx_list(path: str | Path) -> SfxList:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SceneError(f"{path}: cannot read ({e.strerror})") from None
    try:
        src = yamlsrc.load(text)  # JSON is YAML
    except yamlsrc.YamlProblem as p:
        raise SceneError(f"{path}:{p.line}: {p.message}") from None
    data: Any = src.data
    if isinstance(data, list):
        data = {"sounds": data}
    if not isinstance(data, dict):
        raise SceneError(f"{path}:1: an SFX list is a mapping with 'sounds:' (or a list of "
                         f"sounds)")
    data.setdefault("name", path.stem)
    names = [s.get("name") for s in data.get("sounds", []) if isinstance(s, dict)]
    dupes = sorted({n for n in names if names.count(n) > 1 and n is not None})
    if dupes:
        raise SceneError(f"{path}: sound names must be unique; repeated: {', '.join(dupes)}")
    try:
        lst = SfxList.model_validate(data)
    except ValidationError as e:
        raise SceneError(format_errors(e, str(path), src.line_of, None)) from None
    problems = []
    for i, s in enumerate(lst.sounds):
        try:
            sound_ucs(lst, s)
        except ValueError as err:
            line = src.line_of(("sounds", i, "ucs") if s.ucs is not None else ("sounds", i))
            problems.append(f"{path}:{line}: sounds[{i}] ({s.name}): {err}")
    if problems:
        raise SceneError(problems)
    return lst
