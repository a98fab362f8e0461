"""Scene stage, the format: the pydantic models of a scene file, validated and immutable.

Input: plain data (from ``load.py``, which reads YAML and resolves variants). Output: ``Scene``
models whose values are plain numbers in the units their names say (seconds, dB, Hz). The JSON
Schema of the format is generated from these models, so docs and code cannot drift. Nothing after
the scene stage sees these models: ``takes`` and ``arrange`` turn them into frozen dataclasses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .. import units
from ..audio_io import audio_file_problem, user_path
from ..errors import SoundscapeError
from ..units import show
from .values import (
    _NUM_OR_STR,
    DEFAULT_MODEL,
    MAX_EFFECTS,
    MAX_ELEMENTS,
    MAX_PLAYS,
    NAME_PATTERN,
    RESERVED_VARIANTS,
    Ceiling,
    Decibels,
    Duration,
    Effect,
    Level,
    Loudness,
    Pan,
    PositiveDuration,
    SceneDuration,
    TakeDuration,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


class Defaults(_Model):
    """Generation settings every element inherits unless it sets its own."""

    duration: TakeDuration = Field(5.0, description="Length of each generated take (at most "
                                   "5 min). AudioGen generates 10 s at once; longer takes are "
                                   "extended in steps of extend_stride (slower). Prefer a short "
                                   "take plus loop for beds.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature; lower is "
                               "more conservative.")
    top_k: int = Field(250, ge=0, le=4096, description="Sample from the k most likely tokens "
                       "(0 disables).")
    top_p: float = Field(0.0, ge=0, le=1, description="Nucleus sampling; when > 0 it replaces "
                         "top_k.")
    cfg_coef: float = Field(3.0, ge=0, le=30, description="Classifier-free guidance: how "
                            "strongly the prompt is followed.")
    extend_stride: PositiveDuration = Field(5.0, description="For takes longer than the model's "
                                            "window: seconds of new audio per extension step.")


class Loop(_Model):
    """Repeat the take, joined by equal-power crossfades at seam-matched loop points."""

    start: Duration = Field(0.0, description="When the loop starts in the scene.")
    times: int | None = Field(None, ge=1, description="Play the take this many times.")
    until: Duration | None = Field(None, description="Loop until this time (default: the end "
                                   "of the scene).")
    crossfade: Duration = Field(1.0, description="Crossfade length at each loop point.")

    @model_validator(mode="after")
    def _one_end(self) -> Loop:
        if self.times is not None and self.until is not None:
            raise ValueError("give either times or until, not both")
        if self.until is not None and self.until <= self.start:
            raise ValueError(f"until ({self.until:g} s) must be after start ({self.start:g} s)")
        return self


class Scatter(_Model):
    """Random one-shots, like birds or drips: by interval range or by density."""

    interval: tuple[PositiveDuration, PositiveDuration] | None = Field(
        None, description="[min, max] time between one-shot starts, e.g. ['4 s', '12 s'].")
    density: Annotated[float | None, WithJsonSchema({"anyOf": _NUM_OR_STR})] = Field(
        None, gt=0, le=6000, description="Average one-shots per minute (a Poisson process), "
        "e.g. 6 or '6/min' or '0.1/s'.")
    count: int | None = Field(None, ge=1, le=100000, description="Stop after this many "
                              "one-shots.")
    start: Duration = Field(0.0, description="First possible time.")
    end: Duration | None = Field(None, description="Last possible start (default: scene end).")
    level_jitter: Decibels = Field(0.0, ge=0, le=40, description="Each one-shot's level varies "
                                   "randomly by up to +/- this many dB.")
    pan_jitter: float = Field(0.0, ge=0, le=2, description="Each one-shot's pan varies by up "
                              "to +/- this much around the element's pan.")
    overlap: bool = Field(False, description="Allow a one-shot to start before the previous "
                          "one ended.")

    @field_validator("interval", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, list | tuple) or len(v) != 2):
            raise ValueError(f"{show(v)} is not an interval; write [min, max], e.g. "
                             f"['4 s', '12 s']")
        return v

    @field_validator("density", mode="before")
    @classmethod
    def _per_minute(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip().lower().replace(" ", "")
            for suffix, per in (("/min", 1.0), ("/minute", 1.0), ("/s", 60.0), ("/h", 1 / 60)):
                if text.endswith(suffix):
                    try:
                        return float(text[: -len(suffix)]) * per
                    except ValueError:
                        break
            raise ValueError(f"{show(v)} is not a density; write events per minute, e.g. 6 or "
                             f"'6/min' or '0.1/s'")
        return v

    @model_validator(mode="after")
    def _rule(self) -> Scatter:
        if (self.interval is None) == (self.density is None):
            raise ValueError("give exactly one of interval: [min, max] or density: N/min")
        if self.interval and self.interval[0] > self.interval[1]:
            raise ValueError(f"interval min ({self.interval[0]:g} s) is larger than max "
                             f"({self.interval[1]:g} s); write [min, max]")
        return self


class Keyframe(_Model):
    """A point of volume automation; levels are interpolated linearly in dB between points."""

    time: Duration = Field(description="Scene time of this point.")
    level: Level = Field(description="Level at that time, added to the element's volume.")


class Element(_Model):
    """One layer of the scene: a generated take (prompt) or a recording (file)."""

    prompt: str | None = Field(None, min_length=1, description="What AudioGen should generate.")
    file: str | None = Field(None, description="A recording to use instead of a prompt "
                             "(any rate, any channels), relative to the scene file.")
    duration: TakeDuration | None = Field(None, description="Length of the generated take, at "
                                          "most 5 min (default: defaults.duration).")
    temperature: float | None = Field(None, gt=0, le=5, description="Overrides defaults.")
    top_k: int | None = Field(None, ge=0, le=4096, description="Overrides defaults.")
    top_p: float | None = Field(None, ge=0, le=1, description="Overrides defaults.")
    cfg_coef: float | None = Field(None, ge=0, le=30, description="Overrides defaults.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Take seed; default derived "
                             "from the scene seed and the element name.")
    variations: int = Field(1, ge=1, le=64, description="Distinct takes to generate (seeds "
                            "seed, seed+1, ...); scattered one-shots pick among them.")
    volume: Level = Field(0.0, description="Element level: '-6 dB' or linear 0.5.")
    pan: Pan = Field(0.0, description="Stereo position, -1 (left) to 1 (right).")
    mute: bool = Field(False, description="Silence this element (its volume is kept).")
    stereo: Literal["pan", "decorrelate", "two_takes"] = Field(
        "pan", description="How a mono take becomes stereo: 'pan' (constant-power pan), "
        "'decorrelate' (a decorrelated copy on the other side, for wide beds) or 'two_takes' "
        "(a second take of the same prompt on the right).")
    width: float = Field(1.0, ge=0, le=1, description="Stereo width for decorrelate/two_takes, "
                         "0 (mono) to 1 (full).")
    at: Annotated[list[Duration] | None, WithJsonSchema({
        "anyOf": [*_NUM_OR_STR, {"type": "array", "items": {"anyOf": _NUM_OR_STR}}],
        "description": "Start time(s): '12 s' or a list ['5 s', '20 s']."})] = Field(
        None, max_length=MAX_PLAYS, description="Start time(s) of single plays.")
    loop: Annotated[Loop | None, WithJsonSchema({"anyOf": [
        {"type": "boolean"}, Loop.model_json_schema(), {"type": "null"}]})] = Field(
        None, description="Loop the take: true fills the scene.")
    scatter: Scatter | None = Field(None, description="Scatter one-shots randomly.")
    fade_in: Duration = Field(0.0, description="Fade-in of each play (loop: of the whole run).")
    fade_out: Duration = Field(0.0, description="Fade-out of each play (loop: of the whole run).")
    effects: list[Effect] = Field(default_factory=list, max_length=MAX_EFFECTS,
                                  description="Effects, in order.")
    automation: list[Keyframe] = Field(default_factory=list, max_length=MAX_PLAYS,
                                       description="Volume automation keyframes.")

    @field_validator("at", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return v if v is None or isinstance(v, list) else [v]

    @field_validator("loop", mode="before")
    @classmethod
    def _loop_true(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        return v

    @field_validator("file")
    @classmethod
    def _file_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        path = user_path(v, (info.context or {}).get("base_dir"))
        if not path.exists():
            raise ValueError(f"file {show(v)} not found (looked at {path}); give a path relative "
                             f"to the scene file")
        problem = audio_file_problem(path)
        if problem is not None:
            raise ValueError(f"file {show(v)} {problem}")
        return str(path)

    @model_validator(mode="after")
    def _rules(self) -> Element:
        if (self.prompt is None) == (self.file is None):
            raise ValueError("give exactly one of prompt: (text to generate) or file: (a "
                             "recording)")
        placements = [k for k in ("at", "loop", "scatter") if getattr(self, k) is not None]
        if len(placements) > 1:
            raise ValueError(f"give one placement, not {' and '.join(placements)}; use two "
                             f"elements for two behaviours")
        if self.stereo == "two_takes" and self.file is not None:
            raise ValueError("stereo: two_takes needs a prompt; for a file use decorrelate")
        return self

    @property
    def placement(self) -> str:
        for k in ("loop", "scatter"):
            if getattr(self, k) is not None:
                return k
        return "at"

    @property
    def starts_s(self) -> list[float]:
        return list(self.at) if self.at is not None else [0.0]


class Master(_Model):
    """The sum of all stems: master effects, loudness normalisation, true-peak limiting."""

    effects: list[Effect] = Field(default_factory=list, max_length=MAX_EFFECTS,
                                  description="Master effects, in order.")
    loudness: Loudness = Field(-18.0, description="Integrated loudness target (BS.1770).")
    ceiling: Ceiling = Field(-1.0, description="True-peak ceiling of the limiter (dBTP).")
    loopable: PositiveDuration | None = Field(
        None, description="Make the mix loop seamlessly: what rings past its end crossfades "
        "into its start over this long (e.g. '2 s'); loops run on past the end and element "
        "fades at the scene's edges are dropped. The limiter and meters run across the wrap.")


class Scene(_Model):
    """A soundscape: a duration, a sample rate, named elements, a master, and variants."""

    name: str = Field(description="Scene name; also the output folder.", pattern=NAME_PATTERN)
    description: str | None = Field(None, description="Free text.")
    duration: SceneDuration = Field(description="Length of the final mix (at most 24 h).")
    sample_rate: int = Field(48000, description="Output sample rate (Hz or '48 kHz').")
    channels: Literal[1, 2] = Field(2, description="1 (mono) or 2 (stereo).")
    seed: int = Field(0, ge=0, lt=2**63, description="Scene seed: derives element seeds and "
                      "scatter timing.")
    model: str = Field(DEFAULT_MODEL, description="Hugging Face id or local checkpoint "
                       "directory (audiocraft export layout).")
    defaults: Defaults = Field(default_factory=lambda: Defaults(),
                               description="Generation defaults.")
    elements: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Element] = Field(
        description="The layers, by name (at most 256).")
    master: Master = Field(default_factory=lambda: Master(), description="Master bus.")
    exports: list[Literal["loops", "pools"]] = Field(
        default_factory=list, description="Files for game engines written with every render "
        "(as --loops and --export pools): loops (loops/<element>.wav, one seamless period with a "
        "smpl loop) and pools (each scattered element's one-shots and pools/pools.json).")
    variants: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = Field(
        default_factory=dict, description="Named overrides deep-merged onto the base scene; "
        "null removes a key or an element. Not named stems, takes, loops or pools (folders of "
        "the base render).")

    _path: Path | None = PrivateAttr(None)
    _variant: str | None = PrivateAttr(None)

    @field_validator("sample_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        hz = units.parse_hz(v)
        if hz != int(hz) or not 8000 <= hz <= 192000:
            raise ValueError(f"{show(v)} is not a sample rate between 8 and 192 kHz; write e.g. "
                             f"48000 or '48 kHz'")
        return int(hz)

    @field_validator("elements", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        if isinstance(v, dict) and len(v) > MAX_ELEMENTS:  # before validating each of them
            raise ValueError(f"{len(v)} elements is more than {MAX_ELEMENTS}; split the scene")
        return v

    @field_validator("elements")
    @classmethod
    def _some(cls, v: dict[str, Element]) -> dict[str, Element]:
        if not v:
            raise ValueError("a scene needs at least one element")
        return v

    @field_validator("variants")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = [n for n in v if n.lower() in RESERVED_VARIANTS]
        if taken:
            raise ValueError(f"a variant cannot be named {', '.join(map(repr, taken))}: the base "
                             f"render keeps its {', '.join(RESERVED_VARIANTS)} folders under "
                             f"that name; rename it, e.g. '{taken[0]}_v'")
        return v

    @model_validator(mode="after")
    def _wrap_fits(self) -> Scene:
        x = self.master.loopable
        if x is not None and 2 * x > self.duration:
            raise ValueError(f"master.loopable: a {x:g} s crossfade needs a scene of at least "
                             f"{2 * x:g} s (this one is {self.duration:g} s); shorten it")
        return self

    @model_validator(mode="after")
    def _one_sample(self) -> Scene:
        if round(self.duration * self.sample_rate) < 1:
            raise ValueError(f"duration {self.duration:g} s is shorter than one sample at "
                             f"{self.sample_rate} Hz; give at least {1 / self.sample_rate:.3g} s")
        return self

    @model_validator(mode="after")
    def _model_path(self, info: ValidationInfo) -> Scene:
        base = (info.context or {}).get("base_dir")
        if base is not None and self.model not in (DEFAULT_MODEL,) and (
            self.model.startswith((".", "/", "~")) or (Path(base) / self.model).is_dir()
        ):
            resolved = Path(base) / Path(self.model).expanduser()  # absolute '~' wins
            object.__setattr__(self, "model", str(resolved))
        return self

    @property
    def path(self) -> Path | None:
        """The scene file this came from, if any."""
        return self._path

    @property
    def variant(self) -> str | None:
        """The variant this scene was resolved for (None: the base scene)."""
        return self._variant


    def loopable_copy(self, crossfade_s: float) -> Scene:
        """This scene with a loopable mix (``master.loopable``), unless it already has one.

        Raises:
            SoundscapeError: the scene is shorter than twice the crossfade.
        """
        if self.master.loopable:
            return self
        if 2 * crossfade_s > self.duration:
            raise SoundscapeError(
                f"--loopable: {self.label} lasts {self.duration:g} s; a loopable mix crossfades "
                f"its end into its start over {crossfade_s:g} s and needs at least "
                f"{2 * crossfade_s:g} s")
        return self.model_copy(update={"master": self.master.model_copy(
            update={"loopable": crossfade_s})})

    @property
    def label(self) -> str:
        return self.name if self._variant is None else f"{self.name}/{self._variant}"

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def element_seed(self, name: str) -> int:
        """The element's seed, or one derived from the scene seed and the element's name (so
        adding or reordering elements changes no other element's take)."""
        e = self.elements[name]
        if e.seed is not None:
            return e.seed
        return derive_seed(self.seed, name)


def derive_seed(scene_seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{scene_seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31
