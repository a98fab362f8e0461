"""SFX stage: a game's list of one-shots -> N trimmed, loudness-normalised variations each.

Input: a YAML or JSON list (``name``, ``defaults``, ``ucs``, ``sounds: [{name, prompt, duration,
variations, seed, ucs}]``). Output: ``<out>/<list>/<sound>/<sound>-seed<seed>.<fmt>`` (with
``ucs``: ``<sound>/<CatID>_<FXName>_<CreatorID>_<SourceID>-seed<seed>.<fmt>``), each tagged with
its prompt and identity, a manifest and ``catalog.csv`` (one row per file) for library tools.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import ucs
from .audio_io import atomic_write_text, write_audio
from .cache import TakeCache
from .errors import SceneError
from .exports import Tags, now_iso, tag_file
from .generate import Setting, TakeRequest
from .generate.engines import settings_for
from .manifest import db
from .master import integrated_loudness, limit, true_peak_db
from .scene import (
    DEFAULT_MODEL,
    NAME_PATTERN,
    Ceiling,
    Decibels,
    Defaults,
    Loudness,
    PositiveDuration,
    derive_seed,
    format_errors,
    yamlsrc,
)
from .takes import Log, Models, PinnedModel, generate_missing
from .warnings import RenderWarning


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SfxDefaults(_M):
    duration: PositiveDuration = Field(2.0, description="Take length before trimming.")
    variations: int = Field(4, ge=1, le=64, description="Variations per sound.")
    loudness: Loudness = Field(-14.0, description="Loudness of each variation (LUFS).")
    ceiling: Ceiling = Field(-1.0, description="True-peak ceiling (dBTP).")
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
    UCS ``<sound>/<CatID>_<FXName>_<CreatorID>_<SourceID>-seed<seed>.<fmt>``."""
    u = sound_ucs(lst, s)
    stem = s.name if u is None else u.name
    return f"{s.name}/{stem}-seed{seed}.{fmt}"


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


def trim_silence(audio: np.ndarray, sample_rate: int, threshold_db: float,
                 pad_ms: float = 10.0) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the peak, keeping
    ``pad_ms`` of margin and a 5 ms fade at each cut so no click is created."""
    env = np.abs(audio).max(axis=0)
    peak = float(env.max(initial=0.0))
    if peak == 0:
        return audio
    above = np.nonzero(env >= peak * 10 ** (threshold_db / 20))[0]
    pad = int(pad_ms * sample_rate / 1000)
    a, b = max(0, int(above[0]) - pad), min(audio.shape[1], int(above[-1]) + 1 + pad)
    out = audio[:, a:b].copy()
    k = min(int(0.005 * sample_rate), out.shape[1] // 2)
    if k > 0:
        ramp = np.linspace(0, 1, k, dtype=np.float32)
        if a > 0:
            out[:, :k] *= ramp
        if b < audio.shape[1]:
            out[:, -k:] *= ramp[::-1]
    return out


def loudness_for_short(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness; sounds under 0.4 s are measured looped to 0.4 s (BS.1770 needs one
    gating block), which reads the loudness of the sound while it plays."""
    if audio.shape[1] < int(0.4 * sample_rate):
        reps = int(math.ceil(0.4 * sample_rate / max(audio.shape[1], 1))) + 1
        audio = np.tile(audio, reps)
    return integrated_loudness(audio, sample_rate)


@dataclass(frozen=True)
class SfxVariation:
    """One written variation of one sound."""

    sound: str
    prompt: str
    seed: int
    key: str
    file: str  # relative to the list's folder
    duration_s: float
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    generated: bool
    generator: dict[str, str] | None = None  # the device and precision that made it
    ucs: dict[str, str] | None = None  # CatID, FXName, CreatorID, SourceID
    licence: str = ""  # of the weights that made it
    commercial: bool = False  # whether that licence allows commercial use


CATALOG_COLUMNS = ("file", "name", "prompt", "seed", "duration_s", "loudness_lufs",
                   "true_peak_dbtp", "CatID", "FXName", "CreatorID", "SourceID", "licence",
                   "commercial")


def catalog_csv(variations: tuple[SfxVariation, ...] | list[SfxVariation]) -> str:
    """``catalog.csv``: one row per file, the UCS columns empty for sounds without UCS."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CATALOG_COLUMNS)
    for v in variations:
        u = v.ucs or {}
        w.writerow([v.file, v.sound, v.prompt, v.seed, f"{v.duration_s:.6f}",
                    "" if v.loudness_lufs is None else v.loudness_lufs,
                    "" if v.true_peak_dbtp is None else v.true_peak_dbtp,
                    u.get("CatID", ""), u.get("FXName", ""), u.get("CreatorID", ""),
                    u.get("SourceID", ""), v.licence, "yes" if v.commercial else "no"])
    return buf.getvalue()


@dataclass(frozen=True)
class SfxResult:
    """What ``render_sfx`` wrote: the variations and the manifest beside them."""

    name: str
    directory: Path
    manifest: Path
    model: str
    variations: tuple[SfxVariation, ...]
    warnings: tuple[RenderWarning, ...] = ()

    @property
    def generated(self) -> int:
        return sum(v.generated for v in self.variations)


def sfx_requests(lst: SfxList, model: PinnedModel) -> list[tuple[Sound, TakeRequest]]:
    """Every variation's take request (seeds seed, seed+1, ... per sound). The list's sampling
    defaults are AudioGen's; another engine runs at its own defaults."""
    d = lst.defaults
    spec = model.ref.spec
    given: dict[str, Setting] = {"temperature": d.temperature, "top_k": d.top_k,
                                 "top_p": d.top_p, "cfg_coef": d.cfg_coef,
                                 "extend_stride": Defaults().extend_stride}
    settings = settings_for(spec, given if spec.name == "audiogen" else {})
    plan = []
    for s in lst.sounds:
        base = s.seed if s.seed is not None else derive_seed(lst.seed, s.name)
        duration = s.duration or d.duration
        if not spec.extends and duration > spec.max_take_s:
            raise SceneError(f"{lst.name}: sound {s.name}: a {duration:g} s take is longer "
                             f"than the {spec.max_take_s:g} s {spec.title} makes; shorten it")
        for i in range(s.variations or d.variations):
            plan.append((s, TakeRequest.of(spec.name, model.ref.identity, model.revision,
                                           s.prompt, duration, base + i, settings)))
    return plan


def render_sfx(path: str | Path, out: str | Path = "renders", *, model: str | None = None,
               device: str = "auto", cache_dir: str | Path | None = None, fmt: str = "wav",
               max_batch: int = 8, log: Log | None = None, progress: Any = None,
               precision: str = "auto", commercial: bool = False) -> SfxResult:
    """Generate, trim, normalise and write every variation of an SFX list. ``precision``:
    auto, fp32, bf16 or fp16 for the language model."""
    log = log or (lambda s: None)
    lst = load_sfx_list(path)
    d = lst.defaults
    models = Models(None, log)
    pinned = models.pin(model or lst.model, Path(path).parent)
    ref = pinned.ref
    lic = ref.spec.licence
    if (commercial or lst.commercial) and not lic.commercial:
        raise SceneError(f"{path}: commercial use was asked for (--commercial or commercial: "
                         f"true) but {ref.spec.title}'s weights are {lic.name} ({lic.terms}); "
                         f"use a model whose licence allows it, e.g. --model "
                         f"stable-audio-open-small, or drop --commercial")
    plan = sfx_requests(lst, pinned)
    cache = TakeCache(cache_dir)
    generated, warnings = generate_missing([r for _, r in plan], cache, models, device,
                                           max_batch, log, progress, precision)
    root = Path(out) / lst.name
    entries = []
    created = now_iso()
    files = [variation_file(lst, s, r.seed, fmt) for s, r in plan]
    dupes = sorted({f for f in files if files.count(f) > 1})
    if dupes:
        raise SceneError(f"{path}: two variations would both be written as {dupes[0]}; give "
                         f"the sounds different seeds or UCS names")
    for (s, r), rel in zip(plan, files, strict=True):
        got = cache.get(r.key)
        if got is None:
            raise SceneError(f"take {r.key[:12]} of {s.name} vanished from the cache; run again")
        audio, sr = got
        audio = trim_silence(audio, sr, d.trim_threshold)
        target = s.loudness if s.loudness is not None else d.loudness
        measured = loudness_for_short(audio, sr)
        gain = 0.0 if target is None or math.isinf(measured) else target - measured
        audio, _ = limit(audio * np.float32(10 ** (gain / 20)), sr, d.ceiling)
        file = root / rel
        write_audio(file, audio, sr)
        lufs, peak = db(loudness_for_short(audio, sr)), db(true_peak_db(audio, sr))
        u = sound_ucs(lst, s)
        tag_file(file, Tags(u.fxname if u else s.name, f"{lst.name} {s.name}: {s.prompt}",
                            lst.name, None, s.name, s.prompt, r.seed, ref.name, r.key, created,
                            lufs, peak))
        entries.append(SfxVariation(s.name, s.prompt, r.seed, r.key, rel,
                                    audio.shape[1] / sr, lufs, peak, r.key in generated,
                                    cache.generated_with(r.key),
                                    None if u is None else {
                                        "CatID": u.category, "FXName": u.fxname,
                                        "CreatorID": u.creator, "SourceID": u.source},
                                    lic.name, lic.commercial))
    atomic_write_text(root / "catalog.csv", catalog_csv(entries))
    manifest = root / "manifest.json"
    atomic_write_text(manifest, json.dumps({
        "list": lst.name, "source": str(path), "model": ref.name, "engine": ref.engine,
        "revision": pinned.revision,
        "licences": [{"licence": lic.name, "url": lic.url, "commercial": lic.commercial,
                      "terms": lic.terms, "notice": lic.notice,
                      "non_commercial": [] if lic.commercial else [s.name for s in lst.sounds]}],
        "variations": [asdict(v) for v in entries],
        "warnings": [w.to_json() for w in warnings]}, indent=2))
    if lic.notice:
        atomic_write_text(root / "NOTICE.txt", f"{lic.notice}.\nThese sounds were made with "
                          f"{ref.spec.title}, licensed under the {lic.name} ({lic.url}).\n")
    return SfxResult(lst.name, root, manifest, ref.name, tuple(entries), tuple(warnings))
