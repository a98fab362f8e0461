"""soundscape's own numpy versions of the scipy.signal tools a render used (the DC blocker's
filter, the loop search's resampling and correlation), held to scipy.signal itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt, sosfilt_zi

from soundscape.dsp.dcblock import DC_CUTOFF_HZ, _filter, _highpass, _State, block_dc
from soundscape.mixer.loops import SEAM_RATE, _fast_len, _resample_poly, _segment_corr

RATES = [8000, 16000, 22050, 44100, 48000, 96000]


@pytest.mark.parametrize("sr", RATES)
def test_the_dc_blockers_filter_is_butters_section_run_by_sosfilt(sr: int) -> None:
    sos = butter(2, DC_CUTOFF_HZ, "highpass", fs=sr, output="sos")
    b, _, _ = _highpass(sr)
    np.testing.assert_allclose(b, sos[0, :3], rtol=1e-12)
    rng = np.random.default_rng(sr)
    t = np.arange(3 * sr) / sr
    x = np.stack([rng.normal(0, 0.1, t.size) - 0.3,  # an offset and noise
                  0.5 * np.sin(2 * np.pi * 20 * t) + 0.2])  # a tone near the cutoff
    level = np.array([-0.3, 0.2])
    ref, _ = sosfilt(sos, x, axis=-1, zi=sosfilt_zi(sos)[:, None, :] * level[None, :, None])
    state = _State(2, level)
    got = np.concatenate([_filter(x[:, a:a + 7777], sr, state)  # block by block
                          for a in range(0, x.shape[1], 7777)], axis=1)
    assert float(np.abs(got - ref).max()) < 1e-9
    assert float(np.abs(got[:, sr:].mean(axis=1)).max()) < 1e-3  # the offset is gone


def test_block_dc_takes_the_offset_off_a_take() -> None:
    sr = 16000
    x = (np.random.default_rng(2).normal(0, 0.05, (1, 4 * sr)) - 0.033).astype(np.float32)
    y = block_dc(x, sr)
    assert abs(float(y[:, sr // 2:].mean())) < 5e-4 < abs(float(x.mean()))


@pytest.mark.parametrize("sr", [11025, 16000, 22050, 32000, 44100, 48000, 96000])
@pytest.mark.parametrize("frames", [5, 1001, 40_007])
def test_resampling_for_the_seam_search_is_resample_polys(sr: int, frames: int) -> None:
    g = math.gcd(SEAM_RATE, sr)
    up, down = SEAM_RATE // g, sr // g
    x = np.random.default_rng(frames).normal(size=(2, frames))
    ref = resample_poly(x, up, down, axis=1)
    got = _resample_poly(x, up, down)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-12


@pytest.mark.parametrize("channels", [1, 2])
def test_the_seam_correlation_is_fftconvolves(channels: int) -> None:
    rng = np.random.default_rng(channels)
    xf = 333
    head = rng.normal(size=(channels, xf))
    tail = rng.normal(size=(channels, 9000))
    tail[:, 5000:5000 + xf] += 3 * head  # one place matches
    ends = np.arange(4000, 7000)
    got = _segment_corr(head, tail, ends, xf)
    region = tail[:, ends[0] - xf:ends[-1]]
    num = sum(fftconvolve(r, h[::-1], mode="valid") for r, h in zip(region, head, strict=True))
    c = np.concatenate([[0.0], np.cumsum((region ** 2).sum(axis=0))])
    ref = num / (np.sqrt((c[xf:] - c[:-xf]) * float((head * head).sum())) + 1e-12)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-12
    assert int(np.argmax(got)) == 5000 + xf - ends[0]  # ends at 5000 + xf


def test_fft_lengths_are_five_smooth_and_shortest() -> None:
    from scipy.fft import next_fast_len

    assert [_fast_len(n) for n in range(1, 5000)] == \
        [next_fast_len(n, real=True) for n in range(1, 5000)]
