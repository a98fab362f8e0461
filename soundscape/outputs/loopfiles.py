"""Outputs stage, loop files: one seamless period of a looped element, for a game engine.

Input: the element's take, its ``LoopRun`` and plan. Output: the period with the crossfade folded
in, through the element's effects in their steady state.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..arrange import ElementPlan, LoopRun
from ..dsp.effects import build_board, chain_tail_s
from ..mixer.loops import LoopSource
from ..takes.plan import Source
from .incremental import export_key

# Effects whose output is not periodic for a periodic input (an LFO, a block-wise pitch
# shifter): a loop file through them would not join at its ends, so it is written dry.
TIME_VARYING = frozenset({"chorus", "phaser", "pitch_shift"})
STREAM_BLOCK = 1 << 16
# Two turns of the loop through the chain agree (the steady state) when no frame moves by more
# than this share of the turn's peak (-100 dB)
STEADY_WITHIN = 1e-5


def loop_period(take: np.ndarray, run: LoopRun, sample_rate: int) -> np.ndarray:
    """One period of a loop run: the take from its loop start, the crossfade folded in at the
    end, so the last frames blend into the first exactly as every seam of the run does.

    Copy k of a run plays ``take[start:end]`` at run frame ``k * period``; from the second copy
    on, the run repeats with ``period = end - start - crossfade`` frames. The file is run frames
    ``[period + start + xf, 2 * period + start + xf)``: it opens on the take's body just after a
    crossfade and closes with the next crossfade, so the file repeated is the run itself.
    Returns float32 ``(channels, period)``.
    """
    steady = replace(run, start_s=0.0, end_s=None, times=4, fade_in_s=0.0, fade_out_s=0.0)
    src = LoopSource(take, steady, sample_rate, 0)
    a = src.period + src.loop_start + src.xf
    return src.read(a, a + src.period)


def periodic_effects(period: np.ndarray, plan: ElementPlan, sample_rate: int) -> np.ndarray:
    """``period`` through the element's effects in their steady state: the chain hears the
    period repeated until its tails (reverb, delay, compressor release) have wrapped around, and
    the last period is kept, so the effects' tails fold into the file's start as they would in
    an endless loop. Time-varying effects are left out by the caller (``TIME_VARYING``).

    Streamed turn by turn and stopped as soon as two turns agree (or the chain's tail estimate
    is covered), so memory holds two turns, not the tiled tail."""
    n = period.shape[1]
    if not plan.effects or n == 0:
        return period
    warm = int(math.ceil((chain_tail_s(plan.effects) * sample_rate + sample_rate) / n)) + 1
    board = build_board(plan.effects)
    # turn by turn (the chain keeps its state), never the whole tail estimate at once (a long
    # delay's is half an hour), and only until two turns come out alike
    pending = np.zeros((period.shape[0], 0), np.float32)  # output not yet a whole turn
    last: np.ndarray | None = None
    for _ in range(warm + 1):
        for start in range(0, n, STREAM_BLOCK):
            wet = board(period[:, start:start + STREAM_BLOCK], sample_rate, reset=False)
            pending = np.concatenate([pending, np.asarray(wet, np.float32)], axis=1)
        if pending.shape[1] < n:
            continue  # a plugin still withholds its latency
        turn, pending = pending[:, :n], pending[:, n:]
        if last is not None and turn.shape == last.shape and float(
                np.abs(turn - last).max()) <= STEADY_WITHIN * max(float(np.abs(turn).max()), 1e-9):
            return np.ascontiguousarray(turn)
        last = turn
    assert last is not None
    return np.ascontiguousarray(last)


def loop_key(plan: ElementPlan, source: Source, sample_rate: int, bit_depth: int | None) -> str:
    return export_key("loop", source.identity, plan.loops[0].crossfade_s,
                      [repr(fx) for fx in plan.effects], sample_rate, bit_depth)


def loop_file(take: np.ndarray, plan: ElementPlan, sample_rate: int) \
        -> tuple[np.ndarray, list[str]]:
    """The loop file of a looped element: one period through its effects, and the names of the
    time-varying effects it had to leave out (the file would not join at its ends)."""
    period = loop_period(take, plan.loops[0], sample_rate)
    dry = sorted({fx.name for fx in plan.effects} & TIME_VARYING)
    return (period if dry else periodic_effects(period, plan, sample_rate)), dry
