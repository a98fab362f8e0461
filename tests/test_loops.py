"""Loops with known answers: level across every seam and at the run's end, seam search."""

from __future__ import annotations

import numpy as np
import pytest

from soundscape.arrange import LoopRun
from soundscape.mixer.loops import LoopSource, best_loop_points

RATES = [22050, 44100, 48000, 96000]


def rms_db(x: np.ndarray, sr: int, window_s: float = 0.05, hop_s: float = 0.01) -> np.ndarray:
    """50 ms RMS (dB) every 10 ms, channels pooled."""
    w, h = int(window_s * sr), int(hop_s * sr)
    power = (x.astype(np.float64) ** 2).mean(axis=0)
    c = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, power.size - w + 1, h)
    return 10 * np.log10((c[starts + w] - c[starts]) / w)


def tail_db(x: np.ndarray, sr: int) -> float:
    return float(10 * np.log10((x[:, -int(0.05 * sr):].astype(np.float64) ** 2).mean()))


def drone(sr: int, seconds: float, channels: int) -> np.ndarray:
    """A stationary drone whose period is not a whole number of frames at any rate, with a
    partial above the seam search's decimated band."""
    t = np.arange(int(seconds * sr)) / sr
    chans = []
    for c in range(channels):
        ph = 0.7 * c
        chans.append(0.3 * np.sin(2 * np.pi * 110.3 * t + ph)
                     + 0.1 * np.sin(2 * np.pi * 220.6 * t + 1 + ph)
                     + 0.05 * np.sin(2 * np.pi * 3170.9 * t + ph))
    return np.array(chans, dtype=np.float32)


def sweep_ends(take: np.ndarray, sr: int, crossfade_s: float, steps: int = 10) \
        -> list[np.ndarray]:
    """Whole runs whose ends land at ``steps`` positions spread over one loop period."""
    run0 = LoopRun("x", 0, 0.0, 60.0, None, crossfade_s, 0.0, 0.0, 0.0)
    probe = LoopSource(take, run0, sr, 0)
    outs = []
    for j in range(steps):
        length = 3 * probe.period + probe.e + j * probe.period // steps
        run = LoopRun("x", 0, 0.0, length / sr, None, crossfade_s, 0.0, 0.0, 0.0)
        src = LoopSource(take, run, sr, 0, points=probe.points)
        assert src.length == length
        outs.append(src.read(0, src.length))
    return outs


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_drone_keeps_its_level_across_seams_and_wherever_the_run_ends(sr: int,
                                                                      channels: int) -> None:
    take = drone(sr, 3.3, channels)
    body = float(np.median(rms_db(take, sr)))
    for out in sweep_ends(take, sr, 0.5):
        levels = rms_db(out, sr)
        assert np.abs(levels - body).max() <= 0.5
        assert abs(tail_db(out, sr) - body) <= 0.5  # the run's last 50 ms


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_noise_stays_within_its_own_statistics_wherever_the_run_ends(sr: int,
                                                                     channels: int) -> None:
    rng = np.random.default_rng(sr + channels)
    take = rng.normal(0, 0.1, (channels, int(3.0 * sr))).astype(np.float32)
    own = rms_db(take, sr, hop_s=0.05)  # the source's own 50 ms levels, windows not overlapping
    lo, hi = own.mean() - 5 * own.std() - 0.1, own.mean() + 5 * own.std() + 0.1
    for out in sweep_ends(take, sr, 0.5):
        levels = rms_db(out, sr)
        assert lo <= levels.min() and levels.max() <= hi
        assert lo <= tail_db(out, sr) <= hi


def _brightness_sweep(sr: int, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                  float]:
    """Noise at a constant level whose low-pass corner sits at 1.5 kHz for the first 2.5 s,
    at 400 Hz up to the last 2 s, and then sweeps from 400 Hz to 6 kHz. Returns the take and
    the time at which the corner passes 1.5 kHz again."""
    from scipy.signal import istft, stft

    n = int(seconds * sr)
    x = rng.normal(0, 1, n)
    f, t, z = stft(x, sr, nperseg=1024)
    sweep0 = seconds - 2.0
    corner = np.where(t < 2.5, 1500.0,
                      400.0 * (6000.0 / 400.0) ** np.clip((t - sweep0) / 2.0, 0, 1))
    z *= (f[:, None] < corner[None, :])
    _, y = istft(z, sr, nperseg=1024)
    y = y[:n]
    # constant level: normalise 50 ms windows, so only the spectrum tells the windows apart
    w = int(0.05 * sr)
    env = np.sqrt(np.convolve(y**2, np.ones(w) / w, mode="same")) + 1e-9
    y = 0.1 * y / env
    match = sweep0 + 2.0 * np.log(1500 / 400) / np.log(6000 / 400)
    return y[None].astype(np.float32), float(match)


@pytest.mark.parametrize("sr", RATES)
def test_seam_search_matches_the_spectral_envelope_of_noise(sr: int) -> None:
    # waveform correlation is near zero at every lag here; only the envelope finds the seam
    rng = np.random.default_rng(11)
    take, match_s = _brightness_sweep(sr, 6.0, rng)
    xf = int(0.3 * sr)
    pts = best_loop_points(take, xf, sr)
    centre_of_tail = (pts.end - xf / 2) / sr  # the crossfaded tail is centred on the match
    assert abs(centre_of_tail - match_s) < 0.12


@pytest.mark.parametrize("sr", RATES)
def test_seam_is_refined_at_the_full_rate(sr: int) -> None:
    # a tone at 0.3 x the rate lies above the decimated search band at every rate: only the
    # full-rate refinement can put the seam in phase
    t = np.arange(int(2.7 * sr)) / sr
    tone = (0.5 * np.sin(2 * np.pi * 0.3 * sr * 1.0013 * t))[None].astype(np.float32)
    pts = best_loop_points(tone, int(0.2 * sr), sr)
    assert pts.correlation > 0.995
    run = LoopRun("x", 0, 0.0, 8.0, None, 0.2, 0.0, 0.0, 0.0)
    out = LoopSource(tone, run, sr, 0, points=pts).read(0, 8 * sr)
    assert np.abs(rms_db(out, sr) - (20 * np.log10(0.5) - 3.0103)).max() <= 0.5


@pytest.mark.parametrize("sr", RATES)
def test_loop_starts_after_an_intro_when_that_hides_the_seam(sr: int) -> None:
    # 0.4 s fade-in (as generated takes often begin), then a steady drone: a loop from frame 0
    # would crossfade into the fade-in and dip at every seam
    take = drone(sr, 4.0, 1)
    intro = int(0.4 * sr)
    take[:, :intro] *= np.linspace(0, 1, intro, dtype=np.float32)
    run = LoopRun("x", 0, 0.0, 12.0, None, 0.5, 0.0, 0.0, 0.0)
    src = LoopSource(take, run, sr, 0)
    assert src.points.start >= 0.85 * intro  # (its last frames are within 0.1 dB of the body)
    out = src.read(0, src.length)
    body = float(np.median(rms_db(take[:, intro:], sr)))
    assert np.abs(rms_db(out[:, intro:], sr) - body).max() <= 0.5


def test_loop_points_are_deterministic_and_in_range() -> None:
    sr = 48000
    rng = np.random.default_rng(2)
    take = rng.normal(0, 0.1, (2, 5 * sr)).astype(np.float32)
    a = best_loop_points(take, sr // 2, sr)
    assert a == best_loop_points(take, sr // 2, sr)
    assert 0 <= a.start <= sr and 3 * sr <= a.end <= 5 * sr
    assert a.end - a.start >= 2 * (sr // 2)
