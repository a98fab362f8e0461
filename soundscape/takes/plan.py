"""Takes stage, plan: Scene -> each element's ``Source``, before any audio is read.

Input: a validated ``Scene`` and the resolved model. Output: per element a ``Source`` (its take
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

from ..errors import RenderError
from ..generate import TakeRequest
from ..generate.models import ModelRef
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

    @property
    def paired(self) -> bool:
        """Takes come in left/right pairs, one stereo take per variation (``two_takes``)."""
        return self.stereo == "two_takes" and self.channels == 2

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
        out[name] = Source(name, takes, e.file, length_s, digest, scene.sample_rate,
                           scene.channels, e.stereo, e.width, scene.element_seed(name),
                           scene.label)
    return out
