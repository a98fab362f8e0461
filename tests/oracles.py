"""Oracles for the tests: straightforward whole-array versions of what the package streams, and a
reader of what it writes. Used only by tests, so they live here and not in the package."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from soundscape.arrange import LoopRun
from soundscape.dsp.bus import Bus
from soundscape.dsp.effects import EffectSpec
from soundscape.master import MAX_LIMITING_DB, ElementLevels, MasterReport, master_bus
from soundscape.mixer.loops import LoopSource
from soundscape.scene.ucs import ucs_name


def render_loop(take: np.ndarray, run: LoopRun, sample_rate: int, length: int | None) -> \
        np.ndarray:
    """A whole loop run as one array (``length`` frames, or ``times`` copies if None)."""
    if length is not None:  # run past it, then cut to exactly ``length``
        run = replace(run, end_s=run.start_s + length / sample_rate + 1.0, times=None)
    src = LoopSource(take, run, sample_rate, int(round(run.start_s * sample_rate)), length)
    return src.read(0, src.length)


def master(mix: np.ndarray, sample_rate: int, target_lufs: float | None,
           ceiling_db: float, effects: tuple[EffectSpec, ...] = (),
           max_limiting_db: float = MAX_LIMITING_DB,
           elements: tuple[ElementLevels, ...] = ()) -> tuple[np.ndarray, MasterReport]:
    """``master_bus`` for a mix held as one ``(channels, frames)`` array (left unchanged)."""
    out: list[np.ndarray] = []
    with Bus(mix.shape[0], mix.shape[1], array=np.array(mix, np.float32)) as bus:
        report = master_bus(bus, sample_rate, target_lufs, ceiling_db, effects, out.append,
                            max_limiting_db=max_limiting_db, elements=elements)
    return np.concatenate(out, axis=1) if out else np.zeros_like(mix), report


def parse_ucs_name(stem: str) -> tuple[str, str, str, str, str | None]:
    """The blocks of a UCS file name (its stem, without the extension): CatID, FXName,
    CreatorID, SourceID and UserData (None when absent); ValueError when it is not one."""
    blocks = stem.split("_")
    if len(blocks) not in (4, 5):
        raise ValueError(f"{stem!r} has {len(blocks)} blocks; a UCS name has 4 or 5 "
                         f"(CatID_FXName_CreatorID_SourceID[_UserData])")
    category, fxname, creator, source = blocks[:4]
    user_data = blocks[4] if len(blocks) == 5 else None
    ucs_name(category, fxname, creator, source, user_data)
    return category, fxname, creator, source, user_data
