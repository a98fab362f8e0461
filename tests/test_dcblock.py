"""The DC blocker at a take's edges: one-shots from silence and very short takes (review F1, F4).

Known answers: a take that starts on zero starts on zero, sample for sample as the source does; a
take that starts on an offset starts on the signal without it (no thump); a take too short to hold
a period of the cutoff keeps its samples.
"""

from __future__ import annotations

import numpy as np
import pytest

from soundscape.dsp.dcblock import block_dc
from soundscape.takes.conform import conform

RATES = [22050, 44100, 48000, 96000]


def kick(sr: int, seconds: float = 0.5) -> np.ndarray:
    """0.8 sin(2 pi 60 t) exp(-t / 10 ms): a one-shot whose first sample is 0."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.8 * np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.01)).astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_a_one_shot_from_silence_starts_on_its_first_sample(sr: int) -> None:
    k = kick(sr)
    t = np.arange(k.size) / sr
    on_offset = (0.1 * np.sin(2 * np.pi * 440 * t) - 0.2).astype(np.float32)
    y = conform(np.stack([k, on_offset]), sr, sr)
    # left: filtered from rest, so it starts where the kick starts; the first millisecond of the
    # attack follows the source (a 15 Hz high-pass takes off a few % there, a mirrored warm-up
    # about the opening's mean made it 0.18, 10 dB under the peak, at the first sample)
    assert float(y[0, 0]) == 0.0
    ms = sr // 1000
    assert float(np.abs(y[0, :ms] - k[:ms]).max()) < 0.03
    assert float(np.abs(y[0]).max()) <= float(np.abs(k).max())
    # right, in the same take: it starts on its -0.2 offset, which is taken off without a thump
    assert abs(float(y[1, 0])) < 0.01
    assert float(np.abs(y[1]).max()) <= 0.1 * 1.02


@pytest.mark.parametrize("sr", RATES)
def test_a_take_shorter_than_a_period_of_the_cutoff_keeps_its_samples(sr: int) -> None:
    one = np.array([[0.9], [-0.5]], np.float32)  # a 1-frame hit, stereo
    click = np.zeros((1, 5), np.float32)
    click[0, 0] = 1.0
    short_kick = kick(sr, 0.03)[None]  # ends on 0.8 exp(-3) sin(...), mid-swing
    for x in (one, click, short_kick):
        y = conform(x, sr, sr)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, x)
    # one period long, a take is filtered: an offset that fills it is taken off
    period = round(sr / 15)
    y = block_dc(np.full((1, period), 0.5, np.float32), sr)
    assert float(np.abs(y).max()) < 1e-3
