"""SFX files reach their loudness as the master does: the limiter only catches peaks, at most
``max_limiting`` dB of it (review F2). Measured with pyloudnorm and scipy's 8x ``resample_poly``.
"""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly

from soundscape.pipelines.sfx import normalise_short

RATES = [22050, 44100, 48000, 96000]


def levels(x: np.ndarray, sr: int) -> tuple[float, float]:
    """(LUFS, dBTP) by tools that are not ours."""
    up = resample_poly(x.astype(np.float64), 8, 1, axis=1)
    peak = 20 * math.log10(max(float(np.abs(up).max()), float(np.abs(x).max())))
    return float(pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64))), peak


def peaky_hit(sr: int) -> np.ndarray:
    """A 2 ms full-scale burst on a quiet 200 Hz body, 0.6 s: 28-29 dB peak to loudness."""
    rng = np.random.default_rng(0)
    t = np.arange(int(0.6 * sr)) / sr
    hit = 0.02 * np.sin(2 * np.pi * 200 * t) * np.exp(-3 * t)
    burst = int(0.002 * sr)
    hit[:burst] += rng.standard_normal(burst)
    return hit[None].astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_a_peaky_hit_is_not_crushed_to_reach_its_loudness(sr: int) -> None:
    hit = peaky_hit(sr)
    lufs_in, peak_in = levels(hit, sr)
    res = normalise_short(hit, sr, -8.0, -1.0)
    out = res[0]
    lufs, peak = levels(out, sr)
    # the limiting, read as how far the peak-to-loudness ratio fell: at most the 6 dB allowed
    # (it was about 20 dB: the limiter as the loudness tool)
    assert (peak_in - lufs_in) - (peak - lufs) <= 6.0
    assert peak <= -1.0 + 0.05
    # short of -8 LUFS, and the figures it reports are the file's
    assert res.limiting_db <= 6.05
    assert res.loudness_lufs == pytest.approx(lufs, abs=0.1)
    assert res.loudness_lufs < -8.0 - 10
    assert res.plr_db == pytest.approx(peak_in - lufs_in, abs=0.3)
    # the list's own max_limiting is what caps it: with none, the gain is linear
    linear = normalise_short(hit, sr, -8.0, -1.0, max_limiting_db=0.0)
    assert linear.limiting_db <= 0.05
    np.testing.assert_allclose(linear.audio / np.abs(linear.audio).max(),
                               hit / np.abs(hit).max(), atol=2e-3)


@pytest.mark.parametrize("sr", RATES)
def test_a_sound_with_headroom_reaches_its_target_without_limiting(sr: int) -> None:
    t = np.arange(sr) / sr
    tone = (10 ** (-30 / 20) * np.sin(2 * np.pi * 1000 * t))[None].astype(np.float32)
    res = normalise_short(tone, sr, -14.0, -1.0)
    lufs, peak = levels(res.audio, sr)
    assert lufs == pytest.approx(-14.0, abs=0.1)
    assert res.limiting_db == 0.0 and peak <= -1.0
