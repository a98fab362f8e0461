"""Takes stage: Scene -> take requests -> cache / generate -> conformed takes in their stereo mode.

Input: a validated ``Scene`` (or an SFX list's requests) and the model. Output: per element a
``Source`` (known before any audio exists: its take requests or recording, the take length the
arrangement uses, and an identity that changes whenever its conformed audio would), then the
element's takes at the scene's rate in its stereo mode: float32 ``(channels, frames)`` arrays.
Generation runs only for requests missing from the cache; torch and audiocraft are imported only
then (``generate.audiogen``).
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
from .errors import RenderError
from .generate import TakeRequest
from .generate.models import ModelRef
from .scene import Element, Scene
from .warnings import RenderWarning

if TYPE_CHECKING:
    from .generate.audiogen import Generator

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


def two_takes(e: Element, scene: Scene) -> bool:
    return e.stereo == "two_takes" and scene.channels == 2


def take_count(e: Element, scene: Scene) -> int:
    """Takes to generate: one per variation, two (left and right) with ``stereo: two_takes``."""
    return e.variations * (2 if two_takes(e, scene) else 1)


def take_requests(scene: Scene, name: str, identity: str) -> list[Take]:
    """The take requests of one prompt element. Seeds run seed, seed+1, ...; with two_takes,
    variation i is the pair (seed+2i left, seed+2i+1 right)."""
    d, e = scene.defaults, scene.elements[name]
    assert e.prompt is not None
    seed = scene.element_seed(name)
    return [Take(name, i, TakeRequest(
        model=identity, prompt=e.prompt,
        duration_s=e.duration if e.duration is not None else d.duration,
        temperature=e.temperature if e.temperature is not None else d.temperature,
        top_k=e.top_k if e.top_k is not None else d.top_k,
        top_p=e.top_p if e.top_p is not None else d.top_p,
        cfg_coef=e.cfg_coef if e.cfg_coef is not None else d.cfg_coef,
        extend_stride_s=d.extend_stride,
        seed=(seed + i) % 2**63)) for i in range(take_count(e, scene))]


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


def plan_sources(scene: Scene, ref: ModelRef) -> dict[str, Source]:
    """Every element's ``Source``, in scene order."""
    identity = ref.identity if any(e.prompt for e in scene.elements.values()) else ""
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
            takes = tuple(take_requests(scene, name, identity))
            ident = {**common, "takes": [t.request.key for t in takes]}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
        out[name] = Source(name, takes, e.file, length_s, digest)
    return out


def generate_missing(requests: Iterable[TakeRequest], cache: TakeCache, ref: ModelRef,
                     device: str, max_batch: int, log: Log, progress: Progress | None = None,
                     precision: str = "auto") -> tuple[set[str], list[RenderWarning]]:
    """Generate the requests whose keys are not cached, storing each batch as it finishes.

    A key is generated only under its cache lock: keys another render is generating are waited
    for and then read from the cache (or generated here, if that render died first), so two
    renders at once never generate one take twice. Before generating, logs how long it will
    take from this machine's measured cost at the chosen precision (measured with a short probe
    the first time, then remembered). Returns the keys generated now and the warnings of the
    cache and the generator.
    """
    pending: dict[str, TakeRequest] = {}
    for r in requests:
        if r.key not in pending and not cache.has(r.key):
            pending[r.key] = r
    done: set[str] = set()
    notes: list[str] = []
    gen: Generator | None = None
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
            if held:
                mine = [pending.pop(k) for k in held]
                if gen is None:
                    gen = _generator(ref, device, max_batch, progress, log, precision,
                                     mine)
                else:
                    log(_cost_line(gen, ref, mine))
                gen.generate(mine, on_batch=functools.partial(_store, cache, gen, held, done))
        finally:
            for fd in held.values():
                locks.unlock(fd)
        for key in list(pending):  # held by other renders: wait for them, then look again
            locks.unlock(cache.wait_lock(key))
            if cache.has(key):
                del pending[key]
    if gen is not None:
        notes = gen.notes
    warnings = [RenderWarning("cache", p) for p in cache.problems]
    cache.problems.clear()
    return done, warnings + [RenderWarning("generate", note) for note in notes]


def _store(cache: TakeCache, gen: Generator, held: dict[str, int], done: set[str],
           reqs: list[TakeRequest], audio: list[np.ndarray], seconds: float) -> None:
    """Store one finished batch and release its keys' locks (a waiting render reads them)."""
    for r, a in zip(reqs, audio, strict=True):
        cache.put(r, a, gen.sample_rate, seconds / len(reqs),
                  generator={"device": gen.device, "precision": gen.precision})
        done.add(r.key)
        locks.unlock(held.pop(r.key))


def _cost_line(gen: Generator, ref: ModelRef, reqs: list[TakeRequest]) -> str:
    """What generating ``reqs`` costs here, from this machine's measured figure (measured
    with a short probe take the first time, then remembered per machine and model)."""
    from .generate.cost import cached_cost, cost_line, store_cost

    cost = cached_cost(ref.identity, gen.device, gen.precision)
    if cost is None:
        cost = gen.measure_cost()
        store_cost(ref.identity, gen.device, gen.precision, cost)
    return cost_line(len(reqs), sum(r.duration_s for r in reqs), gen.device, gen.precision,
                     cost)


def _generator(ref: ModelRef, device: str, max_batch: int, progress: Progress | None,
               log: Log, precision: str, first: list[TakeRequest]) -> Generator:
    """Load the model (the heavy import happens only now) and say what ``first`` will cost;
    a figure measured before is said before the model loads."""
    from .generate.models import locate

    locate(ref, log=log)  # fail fast (or download), before the slow import
    from .generate.audiogen import Generator, pick_device
    from .generate.cost import cached_cost, cost_line
    from .generate.precision import choose_precision

    dev = pick_device(device)
    prec = choose_precision(precision, dev)
    cost = cached_cost(ref.identity, dev, prec)
    if cost is not None:
        log(cost_line(len(first), sum(r.duration_s for r in first), dev, prec, cost))
    gen = Generator(ref, dev, max_batch=max_batch, progress=progress, log=log, precision=prec)
    if cost is None:
        log(_cost_line(gen, ref, first))
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
    if two_takes(e, scene):
        pairs = []
        for left, right in zip(out[0::2], out[1::2], strict=True):
            n = min(left.shape[1], right.shape[1])
            pairs.append(widen(np.concatenate([left[:, :n], right[:, :n]]), e.width))
        return pairs
    if scene.channels == 2 and e.stereo == "decorrelate":
        return [decorrelate(a, seed + i, e.width, scene.sample_rate) for i, a in enumerate(out)]
    return out
