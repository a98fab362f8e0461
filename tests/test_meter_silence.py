"""The meter skips digital silence once its K-weighting has come to rest, and reads the same."""

from __future__ import annotations

import pickle

import numpy as np
import pyloudnorm
import pytest

import soundscape.dsp.meter as meter_module
from soundscape.dsp.meter import Meter, measure

RATES = [22050, 44100, 48000, 96000]


def _plays(sr: int, channels: int) -> np.ndarray:
    """Sounds that stop dead, between long stretches of digital silence: a 40 Hz tone (the
    K-weighting's high-pass rings longest after it), noise bursts, and a decaying tail that
    reaches -140 dB before the silence."""
    rng = np.random.default_rng(5)
    x = np.zeros((channels, 20 * sr), np.float32)
    t = np.arange(sr) / sr
    x[:, 1 * sr:2 * sr] = 0.5 * np.sin(2 * np.pi * 40 * t)  # cut at a peak of its cycle
    x[:, int(5.3 * sr):int(6.1 * sr)] = rng.normal(0, 0.3, (channels, int(0.8 * sr)))
    tail = rng.normal(0, 0.3, (channels, 2 * sr)) * np.exp(-np.arange(2 * sr) / sr * 8.0)
    x[:, 11 * sr:13 * sr] = tail
    x[:, 19 * sr + 7] = 0.9  # one click near the end
    return x


def _reference(x: np.ndarray, sr: int) -> list[float]:
    """100 ms energies with every frame filtered, in one call."""
    kw = meter_module._k_weighting(sr, x.shape[0])
    y = meter_module._k_filter(kw, x, sr).astype(np.float64)
    sq = (y * y).sum(axis=0)
    edges = [q * sr // 10 for q in range(x.shape[1] * 10 // sr + 1)]
    return [float(sq[a:b].sum()) for a, b in zip(edges, edges[1:], strict=False)]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_silence_is_skipped_only_after_the_filter_rests(sr: int, channels: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    x = _plays(sr, channels)
    filtered = []
    k_filter = meter_module._k_filter

    def counting(board, block, rate):  # type: ignore[no-untyped-def]
        filtered.append(block.shape[1])
        return k_filter(board, block, rate)

    monkeypatch.setattr(meter_module, "_k_filter", counting)
    m = measure(x, sr)
    # the sounds and the filter's ringing after each, not the silence between them
    assert sum(filtered) - filtered[0] < 0.5 * x.shape[1]  # [0]: the meter's priming
    ref = _reference(x, sr)
    assert len(m.energies) == len(ref)
    # every 100 ms, the ringing after the 40 Hz tone's end included, as if all were filtered
    assert m.energies == pytest.approx(ref, rel=1e-6, abs=1e-12)
    assert m.energies[20] > 0 and m.energies[20] == pytest.approx(ref[20], rel=1e-6)
    lufs = pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64))
    assert m.integrated_loudness() == pytest.approx(lufs, abs=1e-3)


def test_a_meter_resting_in_silence_travels_and_measures_on() -> None:
    """Part-way through a signal but with its filter at rest (in a silence), a meter may be
    sent to another process, and measures the rest to the same figures."""
    sr = 48000
    x = _plays(sr, 2)
    whole = measure(x, sr)
    m = Meter(sr, 2)
    cut = 4 * sr  # three seconds after the tone: the filter rests
    m._measure(x[:, :cut])
    moved = pickle.loads(pickle.dumps(m))
    moved._measure(x[:, cut:])
    moved.finish()
    assert moved.energies == pytest.approx(whole.energies, rel=1e-6, abs=1e-12)
    assert moved.integrated_loudness() == pytest.approx(whole.integrated_loudness(), abs=1e-6)
    assert moved.true_peak == whole.true_peak


def test_a_meter_travels_with_the_frames_it_has_gathered() -> None:
    """Blocks shorter than a batch wait in the meter unmeasured (its filter untouched): sent to
    another process then, the meter takes them along and reads what it would have read."""
    sr = 44100
    x = _plays(sr, 2)[:, sr:4 * sr]  # from the tone on
    whole = measure(x, sr)
    m = Meter(sr, 2)
    m.add(x[:, :1000])  # gathered, not measured yet
    m.add(x[:, 1000:5000])
    moved = pickle.loads(pickle.dumps(m))
    assert len(pickle.dumps(m)) < 20 * 5000 + 100_000  # the gathered frames, not a batch
    moved.add(x[:, 5000:])
    moved.finish()
    assert moved.energies == pytest.approx(whole.energies, rel=1e-6, abs=1e-12)
    assert moved.true_peak == pytest.approx(whole.true_peak, rel=1e-6)
    assert moved.sample_peak == whole.sample_peak
