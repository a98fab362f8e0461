"""Master stage: loudness (ITU-R BS.1770 via pyloudnorm) and a true-peak limiter.

Input: the pre-master mix, float32 ``(channels, frames)``. Output: the mastered mix and a report
of what was measured and done. The limiter looks ahead and detects peaks on a 4x oversampled
signal (BS.1770-4 Annex 2), so inter-sample peaks stay under the ceiling without hard clipping.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

OVERSAMPLE = 4


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated); -inf for silence or < 0.4 s."""
    import pyloudnorm

    if audio.shape[1] < int(0.4 * sample_rate):
        return -math.inf
    meter = pyloudnorm.Meter(sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = meter.integrated_loudness(audio.T.astype(np.float64))
    return float(value)


def _oversampled_abs(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-frame peak of |x| over the 4x oversampled signal, max over channels: ``(frames,)``.

    soxr's linear-phase "HQ" interpolator stands in for the BS.1770 Annex 2 FIR: both
    approximate ideal band-limited reconstruction; soxr is far faster on long mixes.
    """
    import soxr

    factor = OVERSAMPLE if sample_rate < 96000 else 2
    n = audio.shape[1]
    up = soxr.resample(np.ascontiguousarray(audio.T, dtype=np.float32), sample_rate,
                       sample_rate * factor, quality="HQ")
    up = np.abs(up[: n * factor])
    if up.shape[0] < n * factor:
        up = np.pad(up, ((0, n * factor - up.shape[0]), (0, 0)))
    peaks = up.max(axis=1).reshape(n, factor).max(axis=1)
    env = np.maximum(peaks, np.abs(audio).max(axis=0))
    # the inter-sample peak between n-1 and n belongs to both frames
    env[1:] = np.maximum(env[1:], peaks[:-1])
    return env


def true_peak_db(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP (4x oversampling per BS.1770-4 Annex 2)."""
    if audio.size == 0:
        return -math.inf
    peak = float(_oversampled_abs(audio, sample_rate).max())
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def _window_min(x: np.ndarray, before: int, after: int) -> np.ndarray:
    from scipy.ndimage import minimum_filter1d

    size = before + after + 1
    padded = np.concatenate([np.ones(before), x, np.ones(after)])
    # with origin=-(size//2) the window of output i covers padded[i .. i+size-1]
    filtered = minimum_filter1d(padded, size=size, mode="nearest", origin=-(size // 2))
    return filtered[: len(x)]


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """mean of x[n-width+1 .. n] (leading edge padded with 1.0, i.e. unity gain)."""
    c = np.cumsum(np.concatenate([np.ones(width), x]))
    return (c[width:] - c[:-width]) / width


def limit(audio: np.ndarray, sample_rate: int, ceiling_db: float = -1.0,
          lookahead_ms: float = 5.0, release_ms: float = 60.0) -> tuple[np.ndarray, float]:
    """True-peak limiter with look-ahead; returns ``(limited, max_gain_reduction_db)``.

    The gain for frame n is the average, over the look-ahead window, of the minimum required
    gain seen in that window; every frame's gain is therefore at or below what it needs, and
    the gain moves smoothly (no hard clipping). A final trim catches the residual error of
    applying a frame-rate gain to an oversampled peak.
    """
    ceiling = 10 ** (ceiling_db / 20)
    env = _oversampled_abs(audio, sample_rate)
    need = np.minimum(1.0, ceiling / np.maximum(env, 1e-12))
    if need.min() >= 1.0:
        return audio, 0.0
    la = max(1, int(sample_rate * lookahead_ms / 1000))
    hold = max(1, int(sample_rate * release_ms / 1000))
    h = _window_min(need, hold, la - 1)  # min over [n-hold, n+la-1]
    gain = _moving_average(h, la)  # mean over [n-la+1, n]: each term <= need[n]
    out = (audio * gain[None, :]).astype(np.float32)
    for _ in range(3):
        tp = true_peak_db(out, sample_rate)
        if tp <= ceiling_db:
            break
        out *= np.float32(10 ** ((ceiling_db - tp - 0.02) / 20))
    reduction = -20 * math.log10(max(float(gain.min()), 1e-12))
    return out, reduction


@dataclass(frozen=True)
class MasterReport:
    input_lufs: float
    gain_db: float
    output_lufs: float
    true_peak_dbtp: float
    limiter_reduction_db: float
    notes: tuple[str, ...] = ()


def master(mix: np.ndarray, sample_rate: int, target_lufs: float | None,
           ceiling_db: float) -> tuple[np.ndarray, MasterReport]:
    """Normalise ``mix`` to ``target_lufs`` (None: leave level) and limit to ``ceiling_db``.

    Limiting lowers loudness a little; the gain is corrected and the limiter re-run until the
    result is within 0.1 LU of the target (at most three passes).
    """
    notes: list[str] = []
    measured = integrated_loudness(mix, sample_rate)
    gain_db = 0.0
    if target_lufs is not None:
        if math.isinf(measured):
            notes.append("the mix is silent or shorter than 0.4 s; loudness not normalised")
        else:
            gain_db = target_lufs - measured
    out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sample_rate, ceiling_db)
    final = None
    if target_lufs is not None and not math.isinf(measured):
        for _ in range(3):
            now = integrated_loudness(out, sample_rate)
            if abs(now - target_lufs) <= 0.1 or reduction == 0.0:
                break
            gain_db += target_lufs - now
            out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sample_rate,
                                   ceiling_db)
        final = integrated_loudness(out, sample_rate)
        if abs(final - target_lufs) > 0.5:
            notes.append(f"reached {final:.1f} LUFS, not {target_lufs:.1f}: the ceiling of "
                         f"{ceiling_db:.1f} dBTP limits {reduction:.1f} dB; lower the target "
                         f"or raise the ceiling")
    if final is None:
        final = integrated_loudness(out, sample_rate)
    report = MasterReport(measured, gain_db, final,
                          true_peak_db(out, sample_rate), reduction, tuple(notes))
    return out, report
