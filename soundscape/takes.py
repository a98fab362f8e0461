"""Takes stage: Scene -> take requests -> cache / generate -> conformed takes in their stereo mode.

Input: a validated ``Scene`` (or an SFX list's requests) and the model. Output: per element a
``Source`` (known before any audio exists: its take requests or recording, the take length the
arrangement uses, and an identity that changes whenever its conformed audio would), then the
element's takes at the scene's rate in its stereo mode: float32 ``(channels, frames)`` arrays.
Generation runs only for requests missing from the cache, by the engine of each element's model
(one scene may mix engines); torch, audiocraft and diffusers are imported only then.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import locks
from .cache import TakeCache
from .errors import RenderError, SceneError
from .generate import Setting, TakeRequest
from .generate.engines import EngineSpec, settings_for
from .generate.models import ModelRef
from .scene import Element, Scene
from .warnings import RenderWarning

if TYPE_CHECKING:
    from .generate.engines import Engine

# Bump when conforming or a stereo mode changes the audio built from the same takes.
TAKES_VERSION = "2"
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


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
    """The models of one render, resolved and pinned once: the scene's (or ``--model``'s) and
    any element's own ``model:``."""

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
            from .generate.models import locate, resolve

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
    """Every element's ``Source``, in scene order."""
    out = {}
    for name, e in scene.elements.items():
        common = {"version": TAKES_VERSION, "rate": scene.sample_rate,
                  "channels": scene.channels, "stereo": e.stereo, "width": e.width,
                  "seed": scene.element_seed(name)}
        length_s = take_length_s(scene, name)
        if e.file is not None:
            ident = {**common, "file": file_digest(e.file)}
            takes: tuple[Take, ...] = ()
        else:
            pinned = models.of_element(scene, name)
            check_engine_fits(scene, name, pinned.ref.spec)
            takes = tuple(take_requests(scene, name, pinned))
            ident = {**common, "takes": [t.request.key for t in takes]}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        out[name] = Source(name, takes, e.file, length_s, digest)
    return out


def check_engine_fits(scene: Scene, name: str, spec: EngineSpec) -> None:
    """The element's settings and take length suit the engine that will run it (the scene
    stage checks this against the scene's own models; ``--model`` may change the engine).

    Raises:
        SceneError: a setting of another engine, or a take longer than the engine makes.
    """
    from .scene.engines import engine_problems

    problems = engine_problems(scene, name, spec)
    if problems:
        raise SceneError(f"{scene.label}: elements.{name}: {problems[0]}")


def generate_missing(requests: Iterable[TakeRequest], cache: TakeCache, models: Models,
                     device: str, max_batch: int, log: Log, progress: Progress | None = None,
                     precision: str = "auto") -> tuple[set[str], list[RenderWarning]]:
    """Generate the requests whose keys are not cached, storing each batch as it finishes.

    A key is generated only under its cache lock: keys another render is generating are waited
    for and then read from the cache (or generated here, if that render died first), so two
    renders at once never generate one take twice. Requests go to the engine of their model
    (one scene may mix engines); each engine is loaded once. Before generating, logs how long
    it will take from this machine's measured cost for that engine, revision and precision
    (measured with a short probe the first time, then remembered). Returns the keys generated
    now and the warnings of the cache and the engines.
    """
    pending: dict[str, TakeRequest] = {}
    for r in requests:
        if r.key not in pending and not cache.has(r.key):
            pending[r.key] = r
    done: set[str] = set()
    engines: dict[str, Engine] = {}
    while pending:
        held: dict[str, int] = {}
        try:
            for key in list(pending):
                fd = cache.try_lock(key)
                if fd is None:
                    continue
                if cache.has(key):  # finished by another render since we looked
                    locks.unlock(fd)
                    del pending[key]
                else:
                    held[key] = fd
            mine_all = [pending.pop(k) for k in list(held)]
            by_model: dict[str, list[TakeRequest]] = {}
            for r in mine_all:
                by_model.setdefault(r.model, []).append(r)
            for identity, mine in by_model.items():
                ref = models.by_identity[identity]
                gen = engines.get(identity)
                if gen is None:
                    gen = engines[identity] = _generator(ref, mine[0].revision, device,
                                                         max_batch, progress, log, precision,
                                                         mine)
                else:
                    log(_cost_line(gen, ref, mine[0].revision, mine))
                gen.generate(mine, on_batch=functools.partial(_store, cache, gen, held, done))
        finally:
            for fd in held.values():
                locks.unlock(fd)
        for key in list(pending):  # held by other renders: wait for them, then look again
            locks.unlock(cache.wait_lock(key))
            if cache.has(key):
                del pending[key]
    notes = [n for g in engines.values() for n in g.notes]
    warnings = [RenderWarning("cache", p) for p in cache.problems]
    cache.problems.clear()
    return done, warnings + [RenderWarning("generate", note) for note in notes]


def _store(cache: TakeCache, gen: Engine, held: dict[str, int], done: set[str],
           reqs: list[TakeRequest], audio: list[np.ndarray], seconds: float) -> None:
    """Store one finished batch and release its keys' locks (a waiting render reads them)."""
    for r, a in zip(reqs, audio, strict=True):
        cache.put(r, a, gen.sample_rate, seconds / len(reqs),
                  generator={"device": gen.device, "precision": gen.precision,
                             "engine": gen.spec.name,
                             "licence": gen.spec.licence.name})
        done.add(r.key)
        locks.unlock(held.pop(r.key))


def cost_model(ref: ModelRef, revision: str) -> str:
    """What a measured cost is remembered by: the engine and the exact weights, so a
    replica's speed is never reported as the real model's."""
    return f"{ref.engine}|{ref.identity}|{revision}"


def _cost_line(gen: Engine, ref: ModelRef, revision: str, reqs: list[TakeRequest]) -> str:
    """What generating ``reqs`` costs here, from this machine's measured figure (measured
    with a short probe take the first time, then remembered per machine, engine, weights and
    precision)."""
    from .generate.cost import cached_cost, cost_line, store_cost

    key = cost_model(ref, revision)
    cost = cached_cost(key, gen.device, gen.precision)
    if cost is None:
        cost = gen.measure_cost()
        store_cost(key, gen.device, gen.precision, cost)
    return cost_line(len(reqs), sum(r.duration_s for r in reqs), gen.device, gen.precision,
                     cost, gen.spec.title)


def _generator(ref: ModelRef, revision: str, device: str, max_batch: int,
               progress: Progress | None, log: Log, precision: str,
               first: list[TakeRequest]) -> Engine:
    """Load the engine (the heavy import happens only now) and say what ``first`` will cost;
    a figure measured before is said before the model loads."""
    from .generate.cost import cached_cost, cost_line
    from .generate.factory import open_engine, pick_device
    from .generate.models import locate
    from .generate.precision import choose_precision

    locate(ref, log=log)  # fail fast (or download), before the slow import
    dev = pick_device(device)
    prec = choose_precision(precision, dev)
    cost = cached_cost(cost_model(ref, revision), dev, prec)
    if cost is not None:
        log(cost_line(len(first), sum(r.duration_s for r in first), dev, prec, cost,
                      ref.spec.title))
    gen = open_engine(ref, dev, max_batch=max_batch, progress=progress, log=log, precision=prec)
    if cost is None:
        log(_cost_line(gen, ref, revision, first))
    return gen


def conform(audio: np.ndarray, sr: int, scene: Scene) -> np.ndarray:
    """A take or recording at the scene's rate, with at most two channels."""
    from .audio_io import resample
    from .stereo import downmix

    return downmix(resample(audio, sr, scene.sample_rate), 2)


def element_takes(scene: Scene, source: Source, cache: TakeCache) -> list[np.ndarray] | None:
    """The element's takes at the scene rate, in its stereo mode; None if a take is missing.

    ``two_takes`` gives one stereo take per variation (left and right from two generations);
    ``decorrelate`` widens each mono take with a decorrelated copy.
    """
    from .audio_io import read_audio
    from .stereo import decorrelate, widen

    name = source.element
    e = scene.elements[name]
    seed = scene.element_seed(name)
    if source.file is not None:
        try:
            audio, sr = read_audio(source.file)
        except Exception as err:  # pedalboard raises several types for unreadable files
            raise RenderError(f"{scene.label}: element {name}: cannot read {source.file} "
                              f"({err})") from None
        audio = conform(audio, sr, scene)
        if e.stereo == "decorrelate" and audio.shape[0] == 1 and scene.channels == 2:
            audio = decorrelate(audio, seed, e.width, scene.sample_rate)
        elif audio.shape[0] == 2 and scene.channels == 2 and e.width < 1:
            audio = widen(audio, e.width)
        return [audio]
    out = []
    for t in source.takes:
        got = cache.get(t.request.key)
        if got is None:
            return None
        out.append(conform(got[0], got[1], scene))
    if any(a.shape[0] == 2 for a in out):  # a stereo engine: stereo stays, width applies
        return [widen(a, e.width) if scene.channels == 2 and e.width < 1 else a for a in out]
    if two_takes(e, scene):
        pairs = []
        for left, right in zip(out[0::2], out[1::2], strict=True):
            n = min(left.shape[1], right.shape[1])
            pairs.append(widen(np.concatenate([left[:, :n], right[:, :n]]), e.width))
        return pairs
    if scene.channels == 2 and e.stereo == "decorrelate":
        return [decorrelate(a, seed + i, e.width, scene.sample_rate) for i, a in enumerate(out)]
    return out
