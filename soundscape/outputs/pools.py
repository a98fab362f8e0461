"""Outputs stage, pools: a scattered element's one-shots as files, and how the scene plays them.

Input: the element's takes and plan. Output: one file per one-shot and ``pools/pools.json`` for an
engine's random container.

A one-shot file is the sound (its take with the element's fades) then its effects' tail, cut where
the tail has fallen below ``TAIL_FLOOR_DB`` under the file's peak for good, and never longer than
``MAX_TAIL_S`` (nor the scene) after the sound: a tick through a long feedback delay would
otherwise ring for half an hour at an inaudible level. The JSON gives the sound's length and the
spacing of plays apart from the file's length, since the mix spaces plays by the sound, not by
its tail.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrange import ElementPlan
from ..dsp.effects import WHOLE_TIMELINE, build_board, chain_tail_s
from ..dsp.fades import apply_fades, fade_curves
from ..notices import RenderWarning
from ..takes.plan import Source
from .incremental import export_key
from .tags import SOFTWARE

POOLS_DIR = "pools"
POOLS_VERSION = 2  # 2: sound_length_s, min_spacing_s and trimmed tails (additive over 1)
TAIL_FLOOR_DB = -60.0  # a tail ends where it stays below this, relative to the file's peak
MAX_TAIL_S = 30.0  # the longest tail a one-shot file keeps after its sound
TAIL_FADE_S = 0.01  # the fade that ends a trimmed tail (below the floor, so inaudible)


@dataclass(frozen=True)
class Pool:
    """One scattered element for an engine's random container: its one-shot files and how the
    scene scatters them. Times in seconds, levels in dB; ``files`` relative to ``pools.json``.

    Each play picks one file at random, plays it at ``volume_db`` plus a uniform draw in
    ``[-level_jitter_db, +level_jitter_db]`` and at ``pan`` plus one in ``[-pan_jitter,
    +pan_jitter]`` (clamped to [-1, 1]). The next play starts a uniform draw in ``interval_s``
    later, or with ``density_per_min`` an exponential draw of mean ``60 / density_per_min``;
    never sooner than ``min_spacing_s`` after the previous play's start. Without ``overlap``
    that is ``sound_length_s``: a play does not start before the previous one's *sound* has
    ended, but its effects' tail (the rest of the file, ``lengths_s`` minus ``sound_length_s``)
    always rings on under the next play, as in the mix; with ``overlap`` it is 0. Plays begin
    after ``start_s``, end by ``end_s`` (null: the scene's end) and stop after ``count`` (null:
    no limit).
    """

    element: str
    files: tuple[str, ...]
    lengths_s: tuple[float, ...]
    channels: int
    volume_db: float | None  # None: silent
    pan: float
    level_jitter_db: float
    pan_jitter: float
    interval_s: tuple[float, float] | None
    density_per_min: float | None
    count: int | None
    start_s: float
    end_s: float | None
    overlap: bool
    prompt: str | None = None
    seeds: tuple[int, ...] = ()
    baked: tuple[str, ...] = ("fades", "effects")  # what the files already carry
    # version 2: the sound without its tail, and the least time between two plays' starts
    # (None when read from a version-1 file, which did not say)
    sound_length_s: float | None = None
    min_spacing_s: float | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pool:
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}  # a newer minor version's extra fields
        return cls(**{**d, "files": tuple(d["files"]), "lengths_s": tuple(d["lengths_s"]),
                      "interval_s": tuple(d["interval_s"]) if d["interval_s"] else None,
                      "seeds": tuple(d.get("seeds", ())), "baked": tuple(d.get("baked", ()))})


@dataclass(frozen=True)
class PoolExport:
    """``pools/pools.json``: every scattered element of one render."""

    scene: str
    variant: str | None
    sample_rate: int
    duration_s: float
    pools: tuple[Pool, ...]
    software: str = SOFTWARE
    version: int = POOLS_VERSION

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))  # tuples as JSON lists
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoolExport:
        known = set(cls.__dataclass_fields__)
        return cls(**{**{k: v for k, v in d.items() if k in known}, "version": d.get("version", 1),
                      "pools": tuple(Pool.from_json(p) for p in d["pools"])})


def read_pools(path: str | Path) -> PoolExport:
    """Read ``pools/pools.json`` back into typed values."""
    return PoolExport.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class OneShot:
    """A one-shot file's audio ``(channels, frames)``, where its sound ends (frames) and, when
    ``MAX_TAIL_S`` cut a tail that was still audible, its level there (dB re the peak)."""

    audio: np.ndarray
    sound_frames: int
    cut_level_db: float | None = None


def one_shot(take: np.ndarray, plan: ElementPlan, sample_rate: int,
             max_tail_s: float = MAX_TAIL_S) -> OneShot:
    """One take as the mix plays it, before volume, jitter and pan: the element's fades, then
    its effects and their tail, trimmed where the tail stays below ``TAIL_FLOOR_DB`` re the
    file's peak and at most ``max_tail_s`` long.

    The tail is rendered block by block and stops once nothing has reached the floor for longer
    than the chain's longest echo, so an estimate of hours costs only what is heard.
    """
    out = apply_fades(take.astype(np.float32, copy=True), int(plan.fade_in_s * sample_rate),
                      int(plan.fade_out_s * sample_rate))
    n = out.shape[1]
    if not plan.effects:
        return OneShot(out, n)
    limit = int(round(min(chain_tail_s(plan.effects), max_tail_s) * sample_rate))
    board = build_board(plan.effects)
    if any(fx.name in WHOLE_TIMELINE for fx in plan.effects):  # does not stream: one call
        padded = np.concatenate([out, np.zeros((out.shape[0], limit), np.float32)], axis=1)
        wet = np.asarray(board(padded, sample_rate), dtype=np.float32)
        hold = int(0.25 * sample_rate)
    else:
        # silence longer than the longest echo means the tail is over
        hold = int((0.25 + max([dict(fx.params).get("time", 0.0) for fx in plan.effects
                                if fx.name == "delay"], default=0.0)) * sample_rate)
        block = max(1, sample_rate // 10)
        parts = [np.asarray(board(out, sample_rate, reset=False), dtype=np.float32)]
        got = parts[0].shape[1]
        peak = float(np.abs(parts[0]).max(initial=0.0))
        last_loud = got
        zeros = np.zeros((out.shape[0], block), np.float32)
        while got < n + limit and got - last_loud < hold:
            y = np.asarray(board(zeros, sample_rate, reset=False), dtype=np.float32)
            a = np.abs(y).max(axis=0) if y.size else np.zeros(0, np.float32)
            peak = max(peak, float(a.max(initial=0.0)))
            loud = np.flatnonzero(a >= peak * 10 ** (TAIL_FLOOR_DB / 20))
            if loud.size:
                last_loud = got + int(loud[-1]) + 1
            parts.append(y)
            got += y.shape[1]
        wet = np.concatenate(parts, axis=1)[:, :n + limit]
    return _trim_tail(wet, n, sample_rate, limit, hold)


def _trim_tail(wet: np.ndarray, n: int, sample_rate: int, limit: int, hold: int) -> OneShot:
    """``wet`` cut after the last frame at or above the floor (never inside the sound's ``n``
    frames), a short fade below the floor closing it; or, when the floor was reached within
    ``hold`` frames of the bound ``n + limit`` (the tail had not died out), at the bound with a
    longer fade, saying how loud the tail still was there."""
    a = np.abs(wet).max(axis=0)
    peak = float(a.max(initial=0.0))
    if peak == 0.0:
        return OneShot(wet[:, :n].copy(), n)
    loud = np.flatnonzero(a >= peak * 10 ** (TAIL_FLOOR_DB / 20))
    end = max(n, int(loud[-1]) + 1 if loud.size else 0)
    cut_db = None
    fade = int(TAIL_FADE_S * sample_rate)
    bound = n + limit
    if limit > 0 and wet.shape[1] >= bound and end > bound - hold:
        # still ringing where the bound cuts it: fade over the last part of what is kept
        fade = min(limit, int(0.5 * sample_rate))
        level = float(a[max(n, bound - hold):bound].max(initial=0.0))
        cut_db = 20 * np.log10(max(level, 1e-12) / peak)
        end = bound
        start = end - fade
    else:
        start = end
        end = min(wet.shape[1], end + fade)
    trimmed = np.ascontiguousarray(wet[:, :end], dtype=np.float32)
    _, curve = fade_curves(0, end - start)
    trimmed[:, start:end] *= curve
    return OneShot(trimmed, n, float(cut_db) if cut_db is not None else None)


def cut_tail_warning(name: str, path: str, shot: OneShot, sample_rate: int) -> RenderWarning:
    """Say that a tail was cut while still audible, and what to do about it."""
    tail_s = (shot.audio.shape[1] - shot.sound_frames) / sample_rate
    return RenderWarning("render", f"{name}: {path}: the effects' tail is still at "
                         f"{shot.cut_level_db:.0f} dB under the file's peak {tail_s:.1f} s after "
                         f"the sound; cut there with a fade (the mix rings on; put a long delay "
                         f"or reverb on the engine's bus instead)", name)


def pool_key(plan: ElementPlan, source: Source, sample_rate: int, bit_depth: int | None,
             max_tail: float = MAX_TAIL_S) -> str:
    return export_key("pool", POOLS_VERSION, source.identity, plan.fade_in_s, plan.fade_out_s,
                      [repr(fx) for fx in plan.effects], sample_rate, bit_depth, max_tail)


def max_tail_s(duration_s: float) -> float:
    """The longest tail a one-shot file keeps in a scene of ``duration_s``: ``MAX_TAIL_S``, or
    the scene's length if shorter (the mix never sounds more of a tail than that)."""
    return min(MAX_TAIL_S, duration_s)


def pool_of(plan: ElementPlan, source: Source, files: tuple[str, ...], directory: Path) -> Pool:
    """The ``Pool`` of a scattered element whose one-shots are ``files`` (relative to the
    render's folder)."""
    sc = plan.scatter
    assert sc is not None
    from ..takes.plan import audio_header

    lengths, channels = [], 1
    for f in files:
        frames, sr, channels = audio_header(directory / f)
        lengths.append(round(frames / sr, 6))
    rel = tuple(str(Path(f).relative_to(POOLS_DIR)) for f in files)
    return Pool(plan.name, rel, tuple(lengths), channels,
                None if plan.volume_db == -math.inf else plan.volume_db, plan.pan,
                sc.level_jitter_db, sc.pan_jitter, sc.interval_s, sc.density_per_min, sc.count,
                sc.start_s, sc.end_s, sc.overlap, plan.prompt, variation_seeds(source),
                sound_length_s=round(plan.take_length_s, 6),
                min_spacing_s=0.0 if sc.overlap else round(plan.take_length_s, 6))


def variation_seeds(source: Source) -> tuple[int, ...]:
    """The seed of each variation (with ``two_takes``, its left take's); empty for a file."""
    takes = source.takes[::2] if source.paired else source.takes
    return tuple(t.request.seed for t in takes)
