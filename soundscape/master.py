"""Master stage: loudness normalisation (ITU-R BS.1770-4) and a true-peak limiter.

Input: the pre-master mix, float32 ``(channels, frames)``. Output: the mastered mix and a report
of what was measured and done. Loudness and true peak are read by ``meter`` (pyloudnorm's
K-weighting, streamed). The limiter looks ahead and works from the oversampled peak envelope
(BS.1770-4 Annex 2; it detects at 8x, finer than the 4x meter, because 4x under-reads
full-band peaks), so inter-sample peaks stay under the ceiling without hard clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .effects import EffectSpec, build_board
from .meter import Interpolator, measure
from .warnings import RenderWarning


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated); -inf for silence or < 0.4 s."""
    return measure(audio, sample_rate, true_peak=False).integrated_loudness()


def true_peak_db(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP (4x oversampling per BS.1770-4 Annex 2)."""
    return measure(audio, sample_rate).true_peak_db


# finer and longer than the 4x meter, which under-reads full-band peaks
LIMITER_DETECTOR = Interpolator(8, 24)


def _required_gain(audio: np.ndarray, ceiling: float) -> np.ndarray:
    """Per-frame gain that brings the oversampled envelope to the ceiling (1 where below)."""
    env = LIMITER_DETECTOR.envelope(audio, floor=ceiling)
    np.maximum(env, np.float32(ceiling), out=env)
    return np.divide(np.float32(ceiling), env, out=env)


def limit(audio: np.ndarray, sample_rate: int, ceiling_db: float = -1.0,
          lookahead_ms: float = 5.0, release_ms: float = 60.0) -> tuple[np.ndarray, float]:
    """True-peak limiter with look-ahead; returns ``(limited, max_gain_reduction_db)``.

    The gain for frame n is the average, over the look-ahead window, of the minimum required
    gain seen in that window; every frame's gain is therefore at or below what it needs, and
    the gain moves smoothly (no hard clipping). A final trim catches the residual error of
    applying a frame-rate gain to an oversampled peak.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (ceiling_db / 20)
    need = _required_gain(audio, ceiling)
    lowest = float(need.min(initial=1.0))
    if lowest >= 1.0:
        return audio, 0.0
    la = max(1, int(sample_rate * lookahead_ms / 1000))
    hold = max(1, int(sample_rate * release_ms / 1000))
    # min over [n-hold, n+la-1], then mean over [n-la+1, n]: each term <= need[n]
    size = hold + la
    gain = minimum_filter1d(need, size, mode="constant", cval=1.0,
                            origin=(size - 1) // 2 - (la - 1))
    gain = uniform_filter1d(gain, la, mode="constant", cval=1.0, origin=(la - 1) // 2)
    np.minimum(gain, need, out=gain)  # guard the filters' rounding
    out = audio * gain
    for _ in range(3):
        tp = measure(out, sample_rate, interpolator=LIMITER_DETECTOR,
                     loudness=False).true_peak_db
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
    warnings: tuple[RenderWarning, ...] = ()


def master(mix: np.ndarray, sample_rate: int, target_lufs: float | None,
           ceiling_db: float, effects: tuple[EffectSpec, ...] = ()) \
        -> tuple[np.ndarray, MasterReport]:
    """Run the master ``effects``, normalise to ``target_lufs`` (None: leave the level) and
    limit to ``ceiling_db``.

    Limiting lowers loudness a little; the gain is corrected and the limiter re-run until the
    result is within 0.1 LU of the target (at most three passes).
    """
    if effects:
        mix = np.ascontiguousarray(build_board(effects)(mix, sample_rate), dtype=np.float32)
    warnings: list[RenderWarning] = []
    measured = integrated_loudness(mix, sample_rate)
    gain_db = 0.0
    if target_lufs is not None:
        if math.isinf(measured):
            warnings.append(RenderWarning("master", "the mix is silent or shorter than 0.4 s; "
                                          "loudness not normalised"))
        else:
            gain_db = target_lufs - measured
    out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sample_rate, ceiling_db)
    result = measure(out, sample_rate)
    if target_lufs is not None and not math.isinf(measured):
        for _ in range(3):
            now = result.integrated_loudness()
            if abs(now - target_lufs) <= 0.1 or reduction == 0.0:
                break
            gain_db += target_lufs - now
            out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sample_rate,
                                   ceiling_db)
            result = measure(out, sample_rate)
        final = result.integrated_loudness()
        if abs(final - target_lufs) > 0.5:
            warnings.append(RenderWarning(
                "master", f"reached {final:.1f} LUFS, not {target_lufs:.1f}: the ceiling of "
                f"{ceiling_db:.1f} dBTP limits {reduction:.1f} dB; lower the target or raise "
                f"the ceiling", None, target_lufs, None, final))
    report = MasterReport(measured, gain_db, result.integrated_loudness(), result.true_peak_db,
                          reduction, tuple(warnings))
    return out, report
