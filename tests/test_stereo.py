"""Stereo from mono and down to stereo: the decorrelator and the BS.775 downmix, known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soundscape.dsp.stereo import (
    DECORRELATOR_DELAY_S,
    allpass_response,
    decorrelate,
    decorrelator_design,
    downmix,
)

RATES = [22050, 44100, 48000, 96000]


def third_octave_db(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Power (dB) per third-octave band from 100 Hz to 8 kHz, per channel: ``(ch, bands)``."""
    from scipy.signal import welch

    f, p = welch(x.astype(np.float64), sr, nperseg=8192, axis=-1)
    centres = 1000 * 2.0 ** (np.arange(-10, 10) / 3)
    centres = centres[(centres >= 100) & (centres <= 8000)]
    bands = [p[:, (f >= c * 2 ** (-1 / 6)) & (f < c * 2 ** (1 / 6))].sum(axis=1)
             for c in centres]
    return centres, 10 * np.log10(np.array(bands).T)


def envelope_lag_ms(stereo: np.ndarray, sr: int) -> float:
    """Lag of the right channel's energy envelope behind the left's (ms): the argmax of the
    cross-correlation of the two envelopes smoothed over 1 ms, within +-30 ms."""
    w = max(1, sr // 1000)
    env = np.array([np.convolve(c.astype(np.float64) ** 2, np.ones(w) / w, mode="same")
                    for c in stereo])
    reach = int(0.03 * sr)
    lags = np.arange(-reach, reach + 1)
    left, right = env[0], env[1]
    cc = [np.dot(left[max(0, -k):left.size - max(0, k)], right[max(0, k):right.size - max(0, -k)])
          for k in lags]
    return float(lags[int(np.argmax(cc))] / sr * 1000)


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("sr", RATES)
def test_decorrelator_is_flat_centred_and_level(sr: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    mono = rng.normal(0, 0.1, (1, 6 * sr)).astype(np.float32)
    st = decorrelate(mono, seed, 1.0, sr)
    assert st.shape == (2, mono.shape[1]) and st.dtype == np.float32
    # level difference within 0.5 dB
    lr_db = 10 * math.log10(float((st[1].astype(np.float64) ** 2).sum()
                                  / (st[0].astype(np.float64) ** 2).sum()))
    assert abs(lr_db) <= 0.5
    # R/L magnitude within +-2 dB in every third-octave band, 100 Hz - 8 kHz; each channel
    # flat against the input too (the old random-phase FIR had notches to -48 dB)
    _, bands = third_octave_db(st, sr)
    _, dry = third_octave_db(mono, sr)
    assert np.abs(bands[1] - bands[0]).max() <= 2.0
    assert np.abs(bands - dry).max() <= 1.0
    # decorrelated: the bed is wide, not a copy
    rho = float(np.corrcoef(st[0], st[1])[0, 1])
    assert abs(rho) < 0.5


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("sr", RATES)
def test_decorrelator_puts_transients_in_the_centre(sr: int, seed: int) -> None:
    clicks = np.zeros((1, sr), np.float32)
    clicks[0, sr // 10::sr // 4] = 1.0
    st = decorrelate(clicks, seed, 1.0, sr)
    assert abs(envelope_lag_ms(st, sr)) <= 1.0
    # energy arrives centred on the same instant in both channels
    n = np.arange(sr)
    centroid = [(n * c.astype(np.float64) ** 2)[: sr // 4].sum()
                / (c.astype(np.float64) ** 2)[: sr // 4].sum() for c in st]
    assert abs(centroid[0] - centroid[1]) / sr * 1000 <= 1.0


def test_decorrelator_design_is_all_pass_with_equal_mean_delay() -> None:
    sr = 48000
    (dl, gl), (dr, gr) = decorrelator_design(3, sr)
    assert int(dl.sum()) == int(dr.sum()) == round(DECORRELATOR_DELAY_S * sr)
    for d, g in ((dl, gl), (dr, gr)):
        h = allpass_response(d, g, sr)
        mag = np.abs(np.fft.rfft(h))
        assert np.allclose(mag, 1.0, atol=1e-6)  # all-pass: flat at every frequency
        centre = float((np.arange(h.size) * h**2).sum())  # energy-weighted mean delay
        assert centre == pytest.approx(d.sum(), abs=0.01)


def test_decorrelator_is_deterministic_per_seed_and_width_zero_is_mono() -> None:
    sr = 44100
    mono = np.random.default_rng(0).normal(0, 0.1, (1, sr)).astype(np.float32)
    a = decorrelate(mono, 5, 1.0, sr)
    np.testing.assert_array_equal(a, decorrelate(mono, 5, 1.0, sr))
    assert not np.allclose(a, decorrelate(mono, 6, 1.0, sr))
    narrow = decorrelate(mono, 5, 0.0, sr)
    np.testing.assert_allclose(narrow[0], narrow[1], atol=1e-7)


def _layout(values: list[float], frames: int = 8) -> np.ndarray:
    return np.repeat(np.array(values, np.float32)[:, None], frames, axis=1)


S = math.sqrt(0.5)


@pytest.mark.parametrize("values,left,right", [
    # 5.1 in WAV/SMPTE order L R C LFE Ls Rs; the LFE is dropped
    ([1, 2, 4, 8, 16, 32], 1 + S * 4 + S * 16, 2 + S * 4 + S * 32),
    ([0, 0, 0, 1, 0, 0], 0.0, 0.0),
    # quad L R Ls Rs
    ([1, 2, 4, 8], 1 + S * 4, 2 + S * 8),
    # 5.0 L R C Ls Rs
    ([1, 2, 4, 8, 16], 1 + S * 4 + S * 8, 2 + S * 4 + S * 16),
    # L R C
    ([1, 2, 4], 1 + S * 4, 2 + S * 4),
    # 7.1 L R C LFE Lrs Rrs Lss Rss
    ([1, 2, 4, 8, 16, 32, 64, 128], 1 + S * (4 + 16 + 64), 2 + S * (4 + 32 + 128)),
    # no known layout: even channels left, odd right, averaged
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 5.0, 6.0),
])
def test_downmix_to_stereo_uses_bs775_coefficients(values: list[float], left: float,
                                                   right: float) -> None:
    out = downmix(_layout(values), 2)
    assert out.shape == (2, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [left, right], rtol=1e-6, atol=1e-7)


def test_downmix_to_mono_and_passthrough() -> None:
    six = _layout([1, 2, 4, 8, 16, 32])
    np.testing.assert_allclose(downmix(six, 1)[:, 0],
                               [(1 + 2 + 2 * S * 4 + S * 16 + S * 32) / 2], rtol=1e-6)
    stereo = _layout([0.5, -0.5])
    assert downmix(stereo, 2) is stereo
    np.testing.assert_allclose(downmix(stereo, 1), np.zeros((1, 8)), atol=1e-7)
    mono = _layout([0.25])
    assert downmix(mono, 2) is mono  # fewer channels than asked: the pan places them
    with pytest.raises(ValueError, match="channels_out must be 1 or 2, not 6"):
        downmix(six, 6)
