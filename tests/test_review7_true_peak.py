"""Review 7: the true peak's gap pruning (``Interpolator._rows_bounds``, ``_tap_bounds``) is
meant to read exactly the brute-force maximum over every gap. Its bounds are exact sums in real
numbers, but the interpolated values are float32 sums of 26 (or 12) products: on the pattern
that reaches the bound (samples of one size with the kernel's signs, a Nyquist square with its
phase flipped at the gap) the computed value lies a few ulps above the computed bound, and a
gap is skipped whose value beats the floor (a sample a hair below it)."""

from __future__ import annotations

import numpy as np
import pytest

from soundscape.dsp.meter import REPORTED_TRUE_PEAK, TRUE_PEAK, Interpolator, measure


def brute(ip: Interpolator, audio: np.ndarray) -> float:
    """Every gap interpolated (the signal between silence), and the samples."""
    c = audio.shape[0]
    ext = np.concatenate([np.zeros((c, ip.taps - 1), np.float32), audio,
                          np.zeros((c, ip.right + 1), np.float32)], axis=1)
    gaps = ip._interpolate(ext, np.arange(ext.shape[1] - ip.taps + 1))
    return max(float(gaps.max()), float(np.abs(audio).max()))


@pytest.mark.parametrize("ip", [TRUE_PEAK, REPORTED_TRUE_PEAK], ids=["8x", "4x"])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_worst_case_gap_is_read_when_a_sample_lies_just_under_it(
        ip: Interpolator, channels: int) -> None:
    rng = np.random.default_rng(7)
    half = ip.kernels[:, ip.factor // 2 - 1]  # the middle position, where the bound is reached
    missed = 0
    for amp in rng.uniform(0.05, 0.4, 40).astype(np.float32):
        x = np.zeros((channels, 48000), np.float32)
        x[-1, 20000:20000 + ip.taps] = np.sign(half) * amp
        value = brute(ip, x)  # the gap's interpolated peak, above every sample
        x[0, 3000] = np.nextafter(np.float32(value), np.float32(0))  # a sample just under it
        assert brute(ip, x) == value
        for floor in (0.0, float(x[0, 3000])):  # a running peak, and the sum's sample peak
            got = measure(x, 48000, interpolator=ip, loudness=False, peak_floor=floor)
            missed += got.true_peak != value
    assert missed == 0
