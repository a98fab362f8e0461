"""Takes stage, plan: Scene -> each element's ``Source``, before any audio is read.

Input: a validated ``Scene`` and its models (``Models``: each element's model, resolved and
pinned to a revision once). Output: per element a ``Source`` (its take
requests or recording, the take length the arrangement uses, and an identity that changes
whenever its conformed audio would). Nothing here reads audio or imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RenderError, SceneError
from ..generate import Setting, TakeRequest
from ..generate.engines import EngineSpec, settings_for
from ..generate.models import ModelRef
from ..options import Log
from ..scene import Element, Scene

# Bump when conforming or a stereo mode changes the audio built from the same takes.
TAKES_VERSION = "3"  # 3: takes lose their DC offset; decorrelate is not 6 ms late




@dataclass(frozen=True)
class Take:
    """One planned take of one element."""

    element: str
    index: int
    request: TakeRequest


@dataclass(frozen=True)
class Source:
    """Where one element's audio comes from, decided before any audio is read."""

    element: str
    takes: tuple[Take, ...]  # prompt elements; empty for a recording
    file: str | None  # a recording
    length_s: float  # the take length the arrangement places
    identity: str  # changes whenever the element's conformed takes would
    # how its takes are conformed: the scene's rate and channels, the element's stereo mode
    sample_rate: int
    channels: int
    stereo: str
    width: float
    seed: int  # the element's (decorrelation is seeded per take from it)
    scene: str  # the scene's label, for messages
    take_channels: int = 1  # the engine's: 2 for Stable Audio, whose takes stay stereo

    @property
    def paired(self) -> bool:
        """Takes come in left/right pairs, one stereo take per variation (``two_takes`` on a
        mono engine)."""
        return self.stereo == "two_takes" and self.channels == 2 and self.take_channels == 1

    @property
    def is_file(self) -> bool:
        return self.file is not None


def two_takes(e: Element, scene: Scene, channels: int = 1) -> bool:
    """Whether the element pairs two mono takes into one stereo take (a stereo engine's takes
    are stereo already)."""
    return e.stereo == "two_takes" and scene.channels == 2 and channels == 1


def take_count(e: Element, scene: Scene, channels: int = 1) -> int:
    """Takes to generate: one per variation, two (left and right) with ``stereo: two_takes``
    on a mono engine."""
    return e.variations * (2 if two_takes(e, scene, channels) else 1)


def element_settings(scene: Scene, name: str, spec: EngineSpec) -> dict[str, Setting]:
    """The element's engine settings: its own, else the scene's defaults, else the engine's."""
    d, e = scene.defaults, scene.elements[name]
    given: dict[str, Setting] = {}
    for k in spec.settings:
        own = getattr(e, k, None)
        given[k] = own if own is not None else getattr(d, k, None)
    return settings_for(spec, given)


def take_requests(scene: Scene, name: str, model: PinnedModel) -> list[Take]:
    """The take requests of one prompt element. Seeds run seed, seed+1, ...; with two_takes,
    variation i is the pair (seed+2i left, seed+2i+1 right)."""
    d, e = scene.defaults, scene.elements[name]
    assert e.prompt is not None
    seed = scene.element_seed(name)
    spec = model.ref.spec
    settings = element_settings(scene, name, spec)
    duration = e.duration if e.duration is not None else d.duration
    return [Take(name, i, TakeRequest.of(spec.name, model.ref.identity, model.revision,
                                         e.prompt, duration, (seed + i) % 2**63, settings))
            for i in range(take_count(e, scene, spec.channels))]


@dataclass(frozen=True)
class PinnedModel:
    """A model and the exact weights (revision) its takes are keyed by."""

    ref: ModelRef
    revision: str


class Models:
    """The models of one command, resolved and pinned once: the scene's (or ``--model``'s)
    and any element's own ``model:``."""

    def __init__(self, override: str | None = None, log: Log | None = None) -> None:
        self.override = override
        self.log = log or (lambda s: None)
        self._pinned: dict[tuple[str, str], PinnedModel] = {}
        self.by_identity: dict[str, ModelRef] = {}

    def name_for(self, scene: Scene, name: str) -> str:
        """The model string of one element: its own ``model:``, else ``--model``, else the
        scene's."""
        own = scene.elements[name].model
        return own if own is not None else (self.override or scene.model)

    def pin(self, model: str, base_dir: Path) -> PinnedModel:
        """Resolve ``model`` and its revision; a hub model not cached yet is downloaded (or
        fails with one line) now, since its takes are keyed by the commit it resolves to."""
        k = (model, str(base_dir))
        if k not in self._pinned:
            from ..generate.models import locate, resolve

            ref = resolve(model, base_dir)
            rev = ref.revision()
            if rev is None:
                locate(ref, log=self.log)
                rev = ref.revision()
            if rev is None:  # pragma: no cover - locate leaves the files in the cache
                raise RenderError(f"model {model}: its revision is unknown after downloading")
            self._pinned[k] = PinnedModel(ref, rev)
            self.by_identity[ref.identity] = ref
        return self._pinned[k]

    def of_element(self, scene: Scene, name: str) -> PinnedModel:
        return self.pin(self.name_for(scene, name), scene.base_dir)


def check_engine_fits(scene: Scene, name: str, spec: EngineSpec) -> None:
    """The element's settings and take length suit the engine that will run it (the scene
    stage checks this against the scene's own models; ``--model`` may change the engine).

    Raises:
        SceneError: a setting of another engine, or a take longer than the engine makes.
    """
    from ..scene.engines import engine_problems

    problems = engine_problems(scene, name, spec)
    if problems:
        raise SceneError(f"{scene.label}: elements.{name}.{problems[0]}")


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (memoised per path, size and modification time)."""
    st = os.stat(path)
    return _digest(str(path), st.st_size, st.st_mtime_ns)


def audio_header(path: str | Path) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of an audio file, without decoding it."""
    from pedalboard.io import AudioFile

    try:
        with AudioFile(str(path)) as f:
            return int(f.frames), int(round(f.samplerate)), int(f.num_channels)
    except Exception as e:  # pedalboard raises several types for unreadable files
        raise RenderError(f"{path}: cannot read this audio file ({e})") from None


def conformed_frames(frames: int, from_hz: int, to_hz: int) -> int:
    """Frames after resampling (soxr rounds the exact length to the nearest frame)."""
    return frames if from_hz == to_hz else int(round(frames * to_hz / from_hz))


def take_length_s(scene: Scene, name: str) -> float:
    """The length of the element's takes at the scene rate, known before any audio exists: the
    requested duration for a prompt, the resampled length of a recording (read from its header).
    """
    e = scene.elements[name]
    if e.file is None:
        return e.duration if e.duration is not None else scene.defaults.duration
    frames, sr, _ = audio_header(e.file)
    return conformed_frames(frames, sr, scene.sample_rate) / scene.sample_rate


def plan_sources(scene: Scene, models: Models) -> dict[str, Source]:
    """Every element's ``Source``, in scene order; each prompt element's takes by the engine
    of its model (one scene may mix engines)."""
    out = {}
    for name, e in scene.elements.items():
        common = {"version": TAKES_VERSION, "rate": scene.sample_rate,
                  "channels": scene.channels, "stereo": e.stereo, "width": e.width,
                  "seed": scene.element_seed(name)}
        length_s = take_length_s(scene, name)
        take_channels = 1
        if e.file is not None:
            ident = {**common, "file": file_digest(e.file)}
            takes: tuple[Take, ...] = ()
        else:
            pinned = models.of_element(scene, name)
            check_engine_fits(scene, name, pinned.ref.spec)
            take_channels = pinned.ref.spec.channels
            takes = tuple(take_requests(scene, name, pinned))
            ident = {**common, "takes": [t.request.key for t in takes]}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        out[name] = Source(name, takes, e.file, length_s, digest, scene.sample_rate,
                           scene.channels, e.stereo, e.width, scene.element_seed(name),
                           scene.label, take_channels)
    return out
