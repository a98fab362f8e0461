"""Loop files through effects in flat memory (issue 23, item 6): the steady state is reached
turn by turn and stops when two turns agree, instead of tiling the period over the chain's
tail estimate (half an hour for a long delay)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from soundscape.arrange import ElementPlan
from soundscape.dsp.effects import build_board, parse_effect
from soundscape.outputs.loopfiles import periodic_effects


@pytest.mark.parametrize("sr", [22050, 96000])
def test_a_long_delay_reaches_its_steady_state_in_a_few_turns_of_memory(sr: int) -> None:
    rng = np.random.default_rng(1)
    period = rng.normal(0, 0.1, (2, 2 * sr)).astype(np.float32)
    fx = (parse_effect({"delay": {"time": "1 s", "feedback": 0.95, "mix": 0.5}}, None),)
    plan = ElementPlan("bed", 2.0, effects=fx)
    tracemalloc.start()
    try:
        out = periodic_effects(period, plan, sr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == period.shape
    # the tail estimate is 180 s: tiled, 90 turns (over 100x a turn); now a few turns
    assert peak <= 12 * period.nbytes, peak / period.nbytes
    # it is the steady state: one more turn through a chain primed with it changes nothing
    board = build_board(fx)
    for _ in range(400):  # 800 s: 0.95 ** 800 is nothing
        last = board(period, sr, reset=False)
    assert float(np.abs(last - out).max()) <= 1e-3 * float(np.abs(out).max())
