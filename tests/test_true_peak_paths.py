"""The true peak's two ways of bounding gaps and two ways of interpolating them give the same
figures to the bit (``Interpolator._rows_bounds``: every gap of a span at once, or the gathered
candidates'; ``_interpolate``: a span worked in pieces, or gathered gaps), and the per-channel
pruning of ``max_gap_peak`` never skips a channel whose gap beats the floor. The limiter and the
pruning rely on a gap's value not depending on which other gaps were asked for."""

from __future__ import annotations

import numpy as np
import pytest

from soundscape.dsp import meter as meter_module
from soundscape.dsp.meter import REPORTED_TRUE_PEAK, TRUE_PEAK, Interpolator, measure


def material(kind: str, channels: int, n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 48000
    if kind == "loud_noise":  # dense: most sub-blocks are candidates
        x = rng.normal(0, 0.3, (channels, n))
    elif kind == "clicks":  # sparse: a few candidates in silence
        x = np.zeros((channels, n))
        x[:, rng.integers(0, n, 40)] = rng.uniform(-0.9, 0.9, (channels, 40))
    else:  # a tone near Nyquist, whose peaks lie between the samples, under a little noise
        x = 0.6 * np.sin(2 * np.pi * 21500 * t + np.arange(channels)[:, None]) \
            + rng.normal(0, 0.01, (channels, n))
    return x.astype(np.float32)


@pytest.mark.parametrize("ip", [TRUE_PEAK, REPORTED_TRUE_PEAK], ids=["8x", "4x"])
@pytest.mark.parametrize("kind", ["loud_noise", "clicks", "tone"])
@pytest.mark.parametrize("channels", [1, 2])
def test_both_bounding_paths_give_the_same_gaps_and_bounds(
        ip: Interpolator, kind: str, channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = material(kind, channels, 30011)
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
    peak = float(np.abs(x).max())
    for floor in (0.0, 0.3 * peak, 0.8 * peak, peak):
        got = {}
        for path, subs in (("span", 10 ** 9), ("gathered", 0)):
            monkeypatch.setattr(meter_module, "DENSE_SUBS", subs)
            _, n, rows, bounds = ip._rows_bounds(ext, floor)
            got[path] = (n, rows, bounds)
        assert got["span"][0] == got["gathered"][0] == x.shape[1]
        np.testing.assert_array_equal(got["span"][1], got["gathered"][1])
        np.testing.assert_array_equal(got["span"][2], got["gathered"][2])
        # every gap left out is bounded by the floor: its interpolated values cannot beat it
        every = ip._interpolate(ext, np.arange(x.shape[1])).max(axis=(0, 1))
        skipped = np.setdiff1d(np.arange(x.shape[1]), got["span"][1])
        assert float(every[skipped].max(initial=0.0)) <= floor


@pytest.mark.parametrize("ip", [TRUE_PEAK, REPORTED_TRUE_PEAK], ids=["8x", "4x"])
@pytest.mark.parametrize("channels", [1, 2, 4])
def test_a_gap_reads_the_same_whichever_gaps_are_asked_with_it(
        ip: Interpolator, channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 3 * meter_module.INTERPOLATE_SPAN + 517  # spans worked in several pieces
    x = material("loud_noise", channels, n, seed=5)
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
    every = ip._interpolate(ext, np.arange(n))  # the span path, piece by piece
    assert every.shape == (channels, ip.factor - 1, n)
    # by float64 sums, the values are those of the kernels (float32 rounding apart)
    k = ip.kernels.astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(ext.astype(np.float64), ip.taps, axis=1)
    exact = np.abs(np.einsum("cnt,tp->cpn", win[:, :n], k))
    np.testing.assert_allclose(every, exact, atol=2e-6)
    rng = np.random.default_rng(2)
    # rows around the pieces' edges, scattered rows, a dense run: each path, each subset
    edges = np.arange(1, 4) * meter_module.INTERPOLATE_SPAN
    subsets = [np.unique(np.clip(np.concatenate([edges - 1, edges, edges + 1]), 0, n - 1)),
               np.sort(rng.choice(n, 300, replace=False)),
               np.arange(1000, 1000 + meter_module.DENSE_MIN + 10)]
    for rows in subsets:
        for dense_min in (0, 10 ** 9):  # the span path, the gathered path
            monkeypatch.setattr(meter_module, "DENSE_MIN", dense_min)
            np.testing.assert_array_equal(ip._interpolate(ext, rows), every[:, :, rows])


@pytest.mark.parametrize("ip", [TRUE_PEAK, REPORTED_TRUE_PEAK], ids=["8x", "4x"])
def test_a_channel_whose_own_gap_beats_the_floor_is_never_skipped(ip: Interpolator) -> None:
    """Channel 0 dense and loud, channel 1 quiet but for one gap that peaks above everything
    in channel 0: pruned channel by channel, channel 1's gap is still read, and so is channel
    0's highest gap when channel 1 holds less."""
    rng = np.random.default_rng(8)
    n = 20000
    half = ip.kernels[:, ip.factor // 2 - 1]
    for lift in (1.02, 0.98):  # channel 1's gap above channel 0's peak, then below it
        x = np.zeros((2, n), np.float32)
        x[0] = rng.normal(0, 0.25, n).astype(np.float32)
        ext0 = np.pad(x[:1], ((0, 0), (ip.left, ip.right)))
        loud = float(ip.gap_peaks(ext0, -1.0).max())
        j = 12345  # a gap whose taps carry the kernel's signs: its value tops its samples
        x[1, j - ip.left:j + ip.right + 1] = np.sign(half) * loud * lift / np.abs(half).sum()
        ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
        brute = float(ip.gap_peaks(ext, -1.0).max())
        assert brute == pytest.approx(max(loud, loud * lift), rel=1e-3)
        for floor in (0.0, float(np.abs(x).max()), brute * 0.99):
            assert ip.max_gap_peak(ext, floor, chunk=16) == brute
        m = measure(x, 48000, interpolator=ip, loudness=False)
        assert m.true_peak == brute
