"""The true-peak meter against an independent 8x reference, and the limiter's release and
ceiling, at every rate and channel count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from soundscape.dsp.meter import measure
from soundscape.master import limit, release_envelope

RATES = [22050, 44100, 48000, 96000]


def tp8(x: np.ndarray) -> float:
    """Independent true-peak reference: 8x polyphase oversampling (scipy)."""
    return 20 * math.log10(float(np.abs(resample_poly(x.astype(np.float64), 8, 1, axis=1)).max()))


def hard(material: str, sr: int, channels: int, seconds: float = 2.0) -> np.ndarray:
    """Material on which a short 4x interpolator under-reads the true peak."""
    rng = np.random.default_rng(sr + channels)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    if material == "clipped_noise":
        x = np.clip(rng.normal(0, 1.0, (channels, n)), -1, 1)
    elif material == "transients":  # full-band: single-sample clicks of either sign
        x = rng.normal(0, 0.01, (channels, n))
        idx = rng.integers(0, n, 40)
        x[:, idx] = rng.choice([-1.0, 1.0], (channels, 40))
    elif material == "near_nyquist":  # 0.4 x the rate: samples fall between the crests
        x = np.tile(0.5 * np.sin(2 * np.pi * 0.4 * sr * t + 0.3), (channels, 1))
    else:  # square wave: overshoot between samples at every edge
        x = np.tile(np.sign(np.sin(2 * np.pi * 997 * t)), (channels, 1))
    return x.astype(np.float32)


MATERIALS = ["clipped_noise", "transients", "near_nyquist", "square"]


@pytest.mark.parametrize("material", MATERIALS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_reported_true_peak_agrees_with_an_8x_reference(sr: int, channels: int,
                                                        material: str) -> None:
    x = hard(material, sr, channels)
    assert measure(x, sr).true_peak_db == pytest.approx(tp8(x), abs=0.2)


@pytest.mark.parametrize("material", MATERIALS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [44100, 48000, 96000])
def test_limiter_holds_the_ceiling_by_an_8x_reference(sr: int, channels: int,
                                                      material: str) -> None:
    x = hard(material, sr, channels) * np.float32(10 ** (8 / 20))  # 8 dB over full scale
    for ceiling in (-1.0, -2.0):
        y, reduction = limit(x, sr, ceiling)
        assert reduction == pytest.approx(tp8(x) - ceiling, abs=0.3)
        assert tp8(y) <= ceiling + 0.1
        assert y.shape == x.shape and np.isfinite(y).all()


def _burst(sr: int, channels: int) -> tuple[np.ndarray, int, int]:
    """A -26 dBFS 1 kHz tone with 0.3 s of it 32 dB louder (about 5 dB over a -1 dB ceiling);
    returns it and the burst's first and end frames."""
    t = np.arange(3 * sr) / sr
    x = np.tile(0.05 * np.sin(2 * np.pi * 1000 * t), (channels, 1)).astype(np.float32)
    b0, b1 = sr, sr + int(0.3 * sr)
    x[:, b0:b1] *= 40.0
    return x, b0, b1


def _gain_db(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The gain the limiter applied, per frame (dB), where the tone is far from zero."""
    g = np.full(x.shape[1], np.nan)
    ok = np.abs(x[0]) > 0.5 * np.abs(x[0]).max() * 0.05 / 2.0
    g[ok] = 20 * np.log10(y[0, ok] / x[0, ok])
    return g


@pytest.mark.parametrize("release_ms", [30.0, 60.0, 200.0])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_limiter_releases_with_its_time_constant(sr: int, channels: int,
                                                 release_ms: float) -> None:
    x, b0, b1 = _burst(sr, channels)
    y, reduction = limit(x, sr, -1.0, lookahead_ms=5.0, release_ms=release_ms)
    g = _gain_db(x, y)
    held = float(np.nanmedian(g[b0 + sr // 20:b1 - sr // 20]))
    assert held == pytest.approx(-reduction, abs=0.3)
    assert reduction > 4.0
    tau = int(release_ms * sr / 1000)
    la2 = int(0.0025 * sr)  # the look-ahead mean delays the curve by half its length

    def at(k: int) -> float:
        seg = g[b1 + la2 + k - sr // 2000:b1 + la2 + k + sr // 2000]
        return float(np.nanmean(seg))

    # exponential recovery in dB: 1/e of the reduction left after one time constant
    assert at(tau) == pytest.approx(held / math.e, abs=0.12 * reduction)
    assert at(3 * tau) == pytest.approx(held / math.e**3, abs=0.1 * reduction)
    # smooth: no step larger than the exponential's initial slope (dB per ms), which is a
    # fraction of a dB per ms for these releases
    ok = ~np.isnan(g)
    frames = np.arange(g.size)
    curve = np.interp(frames, frames[ok], g[ok])
    per_ms = np.abs(np.diff(curve[b1:b1 + 5 * tau:sr // 1000]))  # dB per ms
    assert per_ms.max() <= 1.1 * reduction / release_ms + 0.01
    if release_ms >= 60:
        assert per_ms.max() < 0.15


def test_release_envelope_streams_with_carried_state() -> None:
    rng = np.random.default_rng(0)
    target = np.minimum(0.0, rng.normal(0, 6, 50000)) * (rng.random(50000) < 0.01)
    whole, last = release_envelope(target, 300.0)
    parts, state = [], 0.0
    cuts = [0, 1, 999, 4096, 4097, 20000, 50000]
    for a, b in zip(cuts, cuts[1:], strict=False):
        piece, state = release_envelope(target[a:b], 300.0, state)
        parts.append(piece)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-9)
    assert state == pytest.approx(last)
    # the definition, frame by frame
    a = math.exp(-1 / 300.0)
    ref, g = np.empty_like(target), 0.0
    for i, v in enumerate(target):
        g = min(v, a * g)
        ref[i] = g
    np.testing.assert_allclose(whole, ref, atol=1e-9)


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_limiter_streams_block_by_block_with_the_same_gain(sr: int, channels: int) -> None:
    from soundscape.master import LimiterStream

    rng = np.random.default_rng(sr + channels)
    x = np.clip(rng.normal(0, 0.5, (channels, sr * 2)), -1.5, 1.5).astype(np.float32)
    x[:, sr // 2] = 3.0  # a transient far over the ceiling
    whole, reduction = limit(x, sr, -1.0)
    stream = LimiterStream(sr, channels, -1.0)
    parts, pos = [], 0
    while pos < x.shape[1]:  # blocks of any size, a single frame included
        n = int(rng.choice([1, 17, 4096, 30000]))
        parts.append(stream.push(x[:, pos:pos + n]))
        pos += n
    parts.append(stream.finish())
    y = np.concatenate(parts, axis=1)
    assert y.shape == x.shape
    # limit() also trims the whole output by a constant when the frame-rate gain overshoots
    ratio = float(np.sum(whole.astype(np.float64) * y) / np.sum(y.astype(np.float64) ** 2))
    assert 0.5 < ratio <= 1.0 + 1e-6
    np.testing.assert_allclose(y[:, 1:] * np.float32(ratio), whole[:, 1:], atol=2e-6)
    # the stream also reads the gap between the silence before the signal and its first frame
    # (the whole-array envelope skips it), so its first frame is never louder
    assert np.all(np.abs(y[:, 0] * ratio) <= np.abs(whole[:, 0]) + 1e-6)
    assert stream.reduction_db == pytest.approx(reduction, abs=1e-3)


@pytest.mark.parametrize("channels", [1, 2])
def test_max_gap_peak_is_exact_above_its_floor(channels: int) -> None:
    from soundscape.dsp.meter import TRUE_PEAK as ip

    rng = np.random.default_rng(9)
    x = rng.normal(0, 0.1, (channels, 20000)).astype(np.float32)
    x[:, rng.integers(0, 20000, 30)] = rng.uniform(-0.9, 0.9, (channels, 30))
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
    brute = float(ip.gap_peaks(ext, -1.0).max())
    for floor in (0.0, 0.2, 0.5, 0.8, brute - 1e-4, brute + 1e-3):
        got = ip.max_gap_peak(ext, floor, chunk=64)
        if brute > floor:
            assert got == brute
        else:
            assert got <= floor


@pytest.mark.parametrize("material", MATERIALS + ["steady_noise"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_a_known_sample_peak_as_floor_reads_the_same_true_peak(sr: int, channels: int,
                                                               material: str) -> None:
    """Told the signal's sample peak up front (as the master's output is measured), the meter
    interpolates less and reads the very same true peak, at 8x and at 4x."""
    from soundscape.dsp.meter import REPORTED_TRUE_PEAK, TRUE_PEAK

    if material == "steady_noise":
        x = np.random.default_rng(sr).normal(0, 0.2, (channels, 3 * sr)).astype(np.float32)
    else:
        x = hard(material, sr, channels) * np.float32(0.7)
    peak = float(np.abs(x).max())
    for ip in (TRUE_PEAK, REPORTED_TRUE_PEAK):
        whole = measure(x, sr, interpolator=ip, loudness=False)
        told = measure(x, sr, interpolator=ip, loudness=False, peak_floor=peak)
        assert told.true_peak == whole.true_peak
        assert told.sample_peak == whole.sample_peak == peak


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_the_meter_reads_blocks_from_a_reused_buffer_as_the_whole_signal(sr: int,
                                                                         channels: int) -> None:
    """Blocks handed over from one buffer that the caller overwrites after each call (as the
    mixer does) measure as the whole signal does: the meter keeps what it gathers."""
    from soundscape.dsp.meter import Meter

    x = hard("transients", sr, channels, seconds=12.0)
    whole = measure(x, sr, block=x.shape[1])
    meter = Meter(sr, channels)
    buf = np.empty((channels, 5000), np.float32)
    for i in range(0, x.shape[1], 5000):
        k = min(5000, x.shape[1] - i)
        buf[:, :k] = x[:, i:i + k]
        meter.add(buf[:, :k])
        buf[:] = np.nan  # the caller's next use of its buffer
    meter.finish()
    assert meter.true_peak == whole.true_peak and meter.sample_peak == whole.sample_peak
    assert meter.integrated_loudness() == pytest.approx(whole.integrated_loudness(), abs=1e-9)


@pytest.mark.parametrize("level", [0.2, 0.39, 0.41, 0.9, 1.5])
def test_the_required_gain_is_the_envelopes_whether_or_not_it_is_skipped(level: float) -> None:
    """Below the level where no interpolated value can reach the ceiling the limiter skips its
    envelope: the gain it needs is the one the envelope gives, to the bit, either side of it."""
    from soundscape.master import LIMITER_DETECTOR, _required_gain

    ceiling = 10 ** (-1 / 20)
    rng = np.random.default_rng(int(level * 100))
    x = rng.uniform(-1, 1, (2, 20_000)).astype(np.float32)
    x *= np.float32(level * ceiling / LIMITER_DETECTOR.bound / float(np.abs(x).max()) * 2)
    env = LIMITER_DETECTOR.envelope(x, floor=ceiling)
    np.maximum(env, np.float32(ceiling), out=env)
    want = np.float32(ceiling) / env
    got = _required_gain(x, ceiling)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.shape == (20_000,)


@pytest.mark.parametrize("which", ["TRUE_PEAK", "REPORTED_TRUE_PEAK"])  # the limiter's is the first
@pytest.mark.parametrize("taps_set", ["all", "far"])
def test_the_gap_bounds_never_skip_a_worst_case_gap(which: str, taps_set: str) -> None:
    """A gap whose samples carry its kernel's signs sums every tap's weight: its value is the
    bound itself. Such gaps (all taps, or only the far ones, the near two silent) in quiet
    noise, at every position, are found exactly whatever the floor under them."""
    import soundscape.dsp.meter as meter_module

    ip = getattr(meter_module, which)
    rng = np.random.default_rng(11)
    n = 4000 * (ip.factor - 1)
    x = rng.normal(0, 0.01, (2, n)).astype(np.float32)
    weights = ip.kernels  # (taps, positions)
    for p in range(ip.factor - 1):
        signs = np.sign(weights[:, p])
        if taps_set == "far":
            signs[ip.left:ip.left + 2] = 0.0
        j = 1000 + 4000 * p  # the gap after frame j
        x[p % 2, j - ip.left:j + ip.right + 1] = 0.3 * signs
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
    brute = float(ip.gap_peaks(ext, -1.0).max())
    assert brute > float(np.abs(x).max()) * 1.05  # the peak lies between the samples
    for floor in (0.0, 0.3, brute * 0.9, brute - 1e-4):
        assert ip.max_gap_peak(ext, floor, chunk=1) == brute
    m = measure(x, 48000, interpolator=ip, peak_floor=float(np.abs(x).max()))
    assert m.true_peak == pytest.approx(brute, rel=1e-6)


@pytest.mark.parametrize("width", [1, 2, 12, 26, 33])
def test_window_max_is_the_largest_sample_under_each_gaps_taps(width: int) -> None:
    from soundscape.dsp.meter import SUB, _window_max

    mag = np.random.default_rng(width).random(SUB * 12 + width - 1).astype(np.float32)
    starts = np.array([0, SUB, 5 * SUB, 11 * SUB])
    brute = np.array([[mag[s + j:s + j + width].max() for j in range(SUB)] for s in starts])
    np.testing.assert_array_equal(_window_max(mag, starts, width), brute)
