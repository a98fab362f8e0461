"""Outputs stage, pools: a scattered element's one-shots as files, and how the scene plays them.

Input: the element's takes and plan. Output: one file per one-shot and ``pools/pools.json`` for an
engine's random container.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrange import ElementPlan
from ..dsp.effects import build_board, chain_tail_s
from ..dsp.fades import apply_fades
from ..takes.plan import Source
from .incremental import export_key
from .tags import SOFTWARE

POOLS_DIR = "pools"


@dataclass(frozen=True)
class Pool:
    """One scattered element for an engine's random container: its one-shot files and how the
    scene scatters them. Times in seconds, levels in dB; ``files`` relative to ``pools.json``.

    Each play picks one file at random, plays it at ``volume_db`` plus a uniform draw in
    ``[-level_jitter_db, +level_jitter_db]`` and at ``pan`` plus one in ``[-pan_jitter,
    +pan_jitter]`` (clamped to [-1, 1]). The next play starts a uniform draw in ``interval_s``
    later, or with ``density_per_min`` an exponential draw of mean ``60 / density_per_min``;
    without ``overlap`` never before the previous play ends. Plays begin after ``start_s``, end
    by ``end_s`` (null: the scene's end) and stop after ``count`` (null: no limit).
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

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pool:
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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))  # tuples as JSON lists
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoolExport:
        return cls(**{**d, "pools": tuple(Pool.from_json(p) for p in d["pools"])})


def read_pools(path: str | Path) -> PoolExport:
    """Read ``pools/pools.json`` back into typed values."""
    return PoolExport.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def one_shot(take: np.ndarray, plan: ElementPlan, sample_rate: int) -> np.ndarray:
    """One take as the mix plays it, before volume, jitter and pan: the element's fades, then
    its effects with their whole tail (the file is as long as the take plus the chain's tail)."""
    out = apply_fades(take.astype(np.float32, copy=True), int(plan.fade_in_s * sample_rate),
                      int(plan.fade_out_s * sample_rate))
    if plan.effects:
        tail = int(round(chain_tail_s(plan.effects) * sample_rate))
        padded = np.concatenate([out, np.zeros((out.shape[0], tail), np.float32)], axis=1)
        out = np.ascontiguousarray(build_board(plan.effects)(padded, sample_rate),
                                   dtype=np.float32)
    return out


def pool_key(plan: ElementPlan, source: Source, sample_rate: int, bit_depth: int | None) -> str:
    return export_key("pool", source.identity, plan.fade_in_s, plan.fade_out_s,
                      [repr(fx) for fx in plan.effects], sample_rate, bit_depth)


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
                sc.start_s, sc.end_s, sc.overlap, plan.prompt, variation_seeds(source))


def variation_seeds(source: Source) -> tuple[int, ...]:
    """The seed of each variation (with ``two_takes``, its left take's); empty for a file."""
    takes = source.takes[::2] if source.paired else source.takes
    return tuple(t.request.seed for t in takes)
