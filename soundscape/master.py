"""Master stage: loudness normalisation (ITU-R BS.1770-4) and a true-peak limiter.

Input: the pre-master mix, float32 ``(channels, frames)``. Output: the mastered mix and a report
of what was measured and done. Loudness and true peak are read by ``meter`` (pyloudnorm's
K-weighting, streamed). The limiter looks ahead and works from the oversampled peak envelope
(BS.1770-4 Annex 2's method, at 8x with the meter's own detector), so inter-sample peaks stay
under the ceiling without hard clipping, and the release recovers with its time constant.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dsp.bus import BLOCK, Bus
from .dsp.effects import EffectSpec, build_board, chain_tail_s, split_at_whole_timeline
from .dsp.meter import TRUE_PEAK, Meter, measure
from .dsp.segments import segmented
from .notices import RenderWarning


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, gated); -inf for silence or < 0.4 s."""
    return measure(audio, sample_rate, true_peak=False).integrated_loudness()


def true_peak_db(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP (8x oversampling, ``meter.TRUE_PEAK``)."""
    return measure(audio, sample_rate).true_peak_db


# the meter's own detector (8x, 26 taps): the limiter holds what the manifest reports
LIMITER_DETECTOR = TRUE_PEAK


def _required_gain(audio: np.ndarray, ceiling: float) -> np.ndarray:
    """Per-frame gain that brings the oversampled envelope to the ceiling (1 where below)."""
    if float(np.abs(audio).max(initial=0.0)) * LIMITER_DETECTOR.bound <= ceiling:
        # no interpolated value can reach the ceiling: the envelope is the samples, all under
        # it, and ceiling / ceiling is 1 to the bit
        return np.ones(audio.shape[1], np.float32)
    env = LIMITER_DETECTOR.envelope(audio, floor=ceiling)
    np.maximum(env, np.float32(ceiling), out=env)
    return np.divide(np.float32(ceiling), env, out=env)


def release_envelope(target_db: np.ndarray, release_frames: float, state_db: float = 0.0) \
        -> tuple[np.ndarray, float]:
    """Gain in dB that follows every dip of ``target_db`` at once and recovers from it
    exponentially with time constant ``release_frames``:
    ``g[n] = min(target[n], a * g[n-1])``, ``a = exp(-1 / release_frames)``.

    ``state_db`` is ``g[-1]`` (0: no reduction); the returned state is the last gain, so a
    signal can be processed in consecutive pieces with identical results. Vectorised in rows:
    within a row ``g[j] = a^j * min(a * g[-1], min_{i<=j} a^-i target[i])``, and only the
    carry from row to row is a Python loop.
    """
    n = target_db.size
    a = math.exp(-1.0 / max(release_frames, 1e-9))
    row = int(min(4096, max(1.0, 20 * release_frames)))  # a^-row stays below e^20
    rows = -(-n // row)
    flat = np.zeros(rows * row)
    flat[:n] = target_db
    powers = a ** np.arange(row)
    # each row as if no reduction came before it; rows without a dip stay at 0 dB (most of a
    # mix), so only the others are worked
    grid = flat.reshape(rows, row)
    local = np.zeros_like(grid)
    dips = np.flatnonzero(grid.min(axis=1) < 0.0)
    local[dips] = np.minimum.accumulate(grid[dips] / powers, axis=1) * powers
    carry = np.empty(rows)
    c = min(state_db, 0.0)
    last = a ** row
    for i in range(rows):
        carry[i] = c  # the gain before row i
        c = min(c * last, local[i, -1])
    recovering = np.flatnonzero(carry < 0.0)
    local[recovering] = np.minimum(local[recovering],
                                   carry[recovering, None] * (powers * a)[None, :])
    g = local.ravel()[:n]
    return g, float(g[-1]) if n else state_db


# The final trim aims this far under the ceiling: other true-peak meters (scipy's 8x and 16x
# polyphase, other interpolators) read a limited master up to about 0.05 dB above ours
# (-0.994 and -0.954 dBTP for a -1.0 ceiling when the trim aimed 0.02 dB under it, and only
# when over).
TRUE_PEAK_MARGIN_DB = 0.05


def limit(audio: np.ndarray, sample_rate: int, ceiling_db: float = -1.0,
          lookahead_ms: float = 5.0, release_ms: float = 60.0) -> tuple[np.ndarray, float]:
    """True-peak limiter with look-ahead and release; returns ``(limited, max_reduction_db)``.

    Per frame: the required gain (ceiling over the 8x-oversampled peak envelope); its minimum
    over the next ``lookahead_ms``; a release that follows every dip at once and recovers
    exponentially in dB with time constant ``release_ms``; then the mean over the last
    ``lookahead_ms``, which ramps the gain down over the look-ahead ahead of each peak. Every
    term of that mean is at or below what the current frame needs, so no frame exceeds the
    ceiling and nothing is hard clipped. A final trim catches the residual error of applying
    a frame-rate gain to an oversampled peak.

    Streaming: every step carries bounded state (look-ahead frames of required gain, the
    release's last gain, the mean's last look-ahead frames), so the gain can be computed block
    by block with the output delayed by the look-ahead; ``release_envelope`` takes and returns
    its state for that.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (ceiling_db / 20)
    need = _required_gain(audio, ceiling)
    lowest = float(need.min(initial=1.0))
    if lowest >= 1.0:
        return audio, 0.0
    la = max(1, int(sample_rate * lookahead_ms / 1000))
    # min over [n, n+la-1]
    ahead = minimum_filter1d(need, la, mode="constant", cval=1.0, origin=(la - 1) // 2 - (la - 1))
    ahead_db = np.zeros(ahead.size)
    low = np.flatnonzero(ahead < 1.0)  # logarithms only where there is a reduction
    ahead_db[low] = 20 * np.log10(np.maximum(ahead[low], 1e-12).astype(np.float64))
    gain_db, _ = release_envelope(ahead_db, release_ms * sample_rate / 1000)
    gain = np.ones(gain_db.size, dtype=np.float32)
    low = np.flatnonzero(gain_db < 0.0)
    gain[low] = 10 ** (gain_db[low] / 20)
    # mean over [n-la+1, n]: each term <= need[n]
    gain = uniform_filter1d(gain, la, mode="constant", cval=1.0, origin=(la - 1) // 2)
    np.minimum(gain, need, out=gain)  # guard the filters' rounding
    out = audio * gain
    for _ in range(3):
        tp = measure(out, sample_rate, interpolator=LIMITER_DETECTOR, loudness=False,
                     peak_floor=float(np.abs(out).max(initial=0.0))).true_peak_db
        if tp <= ceiling_db - TRUE_PEAK_MARGIN_DB:
            break
        out *= np.float32(10 ** ((ceiling_db - TRUE_PEAK_MARGIN_DB - tp) / 20))
    reduction = -20 * math.log10(max(float(gain.min()), 1e-12))
    return out, reduction


class LimiterStream:
    """``limit``'s gain, computed block by block with the same result (within float rounding),
    for masters too long to hold: give blocks to ``push`` in order, then call ``finish``; each
    returns the limited frames that are final so far. The output lags the input by the
    look-ahead plus the detector's reach; state is a few look-aheads of frames, whatever the
    length. (``limit``'s final trim is a constant gain over the whole output: a streaming
    caller measures the output's true peak and applies it in a later pass.)
    """

    def __init__(self, sample_rate: int, channels: int, ceiling_db: float = -1.0,
                 lookahead_ms: float = 5.0, release_ms: float = 60.0) -> None:
        self.ceiling = 10 ** (ceiling_db / 20)
        self.la = max(1, int(sample_rate * lookahead_ms / 1000))
        self.release_frames = release_ms * sample_rate / 1000
        self.k = LIMITER_DETECTOR.taps + 2  # context for an exact envelope, each side
        self.channels = channels
        self._left = np.zeros((channels, self.k), np.float32)  # frames before _pending
        self._pending = np.zeros((channels, 0), np.float32)  # input not yet output
        self._need = np.zeros(0, np.float32)  # required gain of _pending's first frames
        self._state_db = 0.0  # the release's last gain
        self._carry = np.ones(self.la - 1)  # the last la-1 released gains (the mean's memory)
        self.lowest = 1.0  # smallest gain applied so far

    def push(self, block: np.ndarray, final: bool = False) -> np.ndarray:
        """Add ``(channels, n)`` frames; return the limited frames now final."""
        from scipy.ndimage import minimum_filter1d

        self._pending = np.concatenate([self._pending, np.asarray(block, np.float32)], axis=1)
        n, known, k = self._pending.shape[1], self._need.size, self.k
        upto = n if final else n - k  # envelope is exact where k frames follow
        if upto > known:
            src = np.concatenate([self._left, self._pending], axis=1)  # frame j at j + k
            ext = src[:, known:upto + 2 * k]
            if final:
                ext = np.concatenate([ext, np.zeros((self.channels, k), np.float32)], axis=1)
            self._need = np.concatenate([self._need,
                                         _required_gain(ext, self.ceiling)[k:k + upto - known]])
        m = self._need.size if final else self._need.size - self.la + 1
        if m <= 0:
            return np.zeros((self.channels, 0), np.float32)
        need = self._need
        if final:  # beyond the end nothing needs reduction, as limit's filters assume
            need = np.concatenate([need, np.ones(self.la - 1, np.float32)])
        # the look-ahead minimum, logarithms and powers only where there is a reduction: most
        # blocks of a mix never reach the ceiling (bit for bit what working every frame gives)
        window = need[:m + self.la - 1]
        ahead_db = np.zeros(m)
        if float(window.min(initial=1.0)) < 1.0:
            ahead = minimum_filter1d(window, self.la, mode="constant", cval=1.0,
                                     origin=(self.la - 1) // 2 - (self.la - 1))[:m]
            low = np.flatnonzero(ahead < 1.0)
            ahead_db[low] = 20 * np.log10(np.maximum(ahead[low], 1e-12).astype(np.float64))
        gain_db, self._state_db = release_envelope(ahead_db, self.release_frames, self._state_db)
        low = np.flatnonzero(gain_db < 0.0)
        if low.size == 0 and float(self._carry.min(initial=1.0)) >= 1.0:
            # no reduction in this stretch nor in the mean's memory: every gain is 1, as the
            # mean of ones is (and the carry stays ones); the frames pass as they are
            out = self._pending[:, :m].copy()
        else:
            linear = np.ones(m)
            linear[low] = 10 ** (gain_db[low] / 20)
            both = np.concatenate([self._carry, linear])
            sums = np.cumsum(np.concatenate([[0.0], both]))
            mean = ((sums[self.la:] - sums[:-self.la]) / self.la).astype(np.float32)
            if self.la > 1:
                self._carry = both[-(self.la - 1):]
            gain = np.minimum(mean, self._need[:m])
            self.lowest = min(self.lowest, float(gain.min(initial=1.0)))
            out = self._pending[:, :m] * gain
        self._left = np.concatenate([self._left, self._pending[:, :m]], axis=1)[:, -k:]
        self._pending, self._need = self._pending[:, m:], self._need[m:]
        return out

    def finish(self) -> np.ndarray:
        """The remaining frames (the signal is followed by silence)."""
        return self.push(np.zeros((self.channels, 0), np.float32), final=True)

    @property
    def reduction_db(self) -> float:
        return -20 * math.log10(max(self.lowest, 1e-12))


# The most the limiter may reduce the sum's peaks to reach a loudness target (``master:
# max_limiting``). A limiter catches peaks; past a few dB it becomes the loudness tool and
# flattens the mix (a dungeon scene went from a 13.2 dB to a 1.0 dB spread of 400 ms levels
# under 23 dB of limiting, for +0.1 LU). ffmpeg's loudnorm likewise stays linear.
MAX_LIMITING_DB = 6.0
# A make-up step that raises loudness by less than this (LU per dB of gain) has reached where
# more gain no longer makes the mix louder, only flatter: the master stops raising it there.
MIN_MAKEUP_YIELD = 0.1


@dataclass(frozen=True)
class ElementLevels:
    """What one element brings to the sum before the master: its stem's integrated loudness
    (LUFS) and true peak (dBTP)."""
    name: str
    loudness_lufs: float
    true_peak_dbtp: float

    @property
    def peak_to_loudness_db(self) -> float:
        """PLR: how far its peaks stand above its loudness (EBU R 128 s1's term)."""
        return self.true_peak_dbtp - self.loudness_lufs


@dataclass(frozen=True)
class MasterReport:
    input_lufs: float
    gain_db: float
    output_lufs: float
    true_peak_dbtp: float
    limiter_reduction_db: float
    warnings: tuple[RenderWarning, ...] = ()
    max_limiting_db: float = MAX_LIMITING_DB
    # the sum's peak-to-loudness ratio before the master (after its effects), dB
    input_plr_db: float | None = None
    # short of the target: the element whose peaks stand highest in the sum, and its PLR
    blocked_by: str | None = None
    blocked_by_plr_db: float | None = None


@dataclass(frozen=True)
class SumLevels:
    """What was measured of the sum before the master's gain: ``loudness`` is its meter,
    finished (integrated loudness from its 100 ms energies, and sample peak), and
    ``true_peak_db`` its true peak by ``LIMITER_DETECTOR`` (dBTP)."""
    loudness: Meter
    true_peak_db: float

    @classmethod
    def of(cls, meter: Meter) -> SumLevels:
        """From one finished meter that read both (with ``LIMITER_DETECTOR``)."""
        return cls(meter, meter.true_peak_db)


@dataclass(frozen=True)
class _Pass:
    """What one limiter pass measured of its output, before and after the final trim."""
    loudness: float  # LUFS, before the trim
    true_peak_db: float  # before the trim
    reduction_db: float
    trim_db: float  # <= 0: the constant gain that brings the true peak under the ceiling

    @property
    def loudness_after(self) -> float:
        return self.loudness + self.trim_db


def sum_true_peak_db(mix: Bus, sample_rate: int, sample_peak: float,
                  pool: ThreadPoolExecutor | None = None,
                  also: Meter | None = None) -> float:
    """The sum's true peak (dBTP, ``LIMITER_DETECTOR``), from its known ``sample_peak`` up: only
    the gaps that could rise above it are interpolated. With a ``pool``, on its thread, as
    ``also`` (a meter) reads the same blocks on this one."""
    peaks = Meter(sample_rate, mix.channels, interpolator=LIMITER_DETECTOR, loudness=False,
                  peak_floor=sample_peak)  # a level the signal reaches: the gaps' floor
    pending = None
    for _, block in mix.blocks(BLOCK):
        if pool is None:
            peaks.add(block)
            continue
        if pending is not None:
            pending.result()
        pending = pool.submit(peaks.add, block)
        if also is not None:
            also.add(block)
    if pending is not None:
        pending.result()
    return peaks.finish().true_peak_db


def measure_sum(mix: Bus, sample_rate: int, pool: ThreadPoolExecutor) -> SumLevels:
    """The sum's loudness, sample and true peak, as the master's first pass would read them
    (``master_bus``'s ``measured_sum``), in two threads: the true peak on ``pool``'s as the
    blocks go. The sample peak is read first (unless the bus knows it: ``Bus.peak``): the
    true peak then interpolates, from the first block on, only the gaps that could rise above
    it (from a running peak that starts at zero, most early gaps are worked for nothing)."""
    sample_peak = mix.peak if mix.peak is not None else max(
        (float(np.abs(block).max(initial=0.0)) for _, block in mix.blocks(BLOCK)), default=0.0)
    loudness = Meter(sample_rate, mix.channels, true_peak=False)
    tp = sum_true_peak_db(mix, sample_rate, sample_peak, pool, also=loudness)
    return SumLevels(loudness.finish(), tp)


def master_bus(bus: Bus, sample_rate: int, target_lufs: float | None, ceiling_db: float,
               effects: tuple[EffectSpec, ...], sink: Callable[[np.ndarray], None],
               scratch: Path | None = None, loop: bool = False,
               max_limiting_db: float = MAX_LIMITING_DB,
               elements: tuple[ElementLevels, ...] = (),
               measured_sum: SumLevels | None = None, keep_sum: bool = False) -> MasterReport:
    """Master the sum in ``bus`` and hand the result to ``sink`` block by block, in order.

    The master ``effects`` run first (streamed, their output written back over the bus);
    the result is normalised to ``target_lufs`` (None: leave the level) and limited to
    ``ceiling_db``. The gain is linear make-up; the limiter only catches peaks: the make-up
    stops where the limiter would reduce the peaks by more than ``max_limiting_db``, and where
    more gain no longer raises the loudness. Limiting lowers loudness a little, so the gain is
    corrected and the limiter run again until the result is within 0.1 LU of the target, or
    the make-up stops (at most three more passes). A last constant trim catches the limiter's
    residual error against the true-peak meter. Short of the target by more than 0.5 LU, the
    report names the element in ``elements`` whose peaks stand highest in the sum (they set
    how far the sum can be raised) with its peak-to-loudness ratio, and warns.

    Every pass reads the bus block by block and the limiter's output is staged in a second
    bus (on disk beside ``scratch`` when long), so memory stays flat at any length.

    ``loop``: the bus is a loop (``Bus.fold``): the effects and the limiter start with the
    state its end leaves them in, and the limiter looks ahead across the wrap into its start.

    ``measured_sum``: what the caller measured of the bus as it made the sum; without master
    effects the first pass is then not needed. ``keep_sum``: leave the bus as it is (the
    effects' output goes to a temporary bus of its own rather than over the sum).

    Where the gain leaves the sum's true peak under the ceiling (less the final trim's margin),
    the limiter cannot act: the output is the sum times the gain, written in one pass, and its
    loudness and true peak are the sum's moved by the gain, not measured again.
    """
    with contextlib.ExitStack() as stack:
        wet = stack.enter_context(Bus.temporary(bus.channels, bus.frames, scratch)) \
            if effects and keep_sum else bus
        dry = measured_sum if measured_sum is not None and not effects else \
            SumLevels.of(_effects_pass(bus, sample_rate, effects, loop, wet))
        return _master(wet, dry, sample_rate, target_lufs, ceiling_db, sink, scratch, loop,
                       max_limiting_db, elements)


def _master(bus: Bus, dry: SumLevels, sample_rate: int, target_lufs: float | None,
            ceiling_db: float, sink: Callable[[np.ndarray], None], scratch: Path | None,
            loop: bool, max_limiting_db: float,
            elements: tuple[ElementLevels, ...]) -> MasterReport:
    """``master_bus`` after its effects: ``bus`` holds their output, ``dry`` its meter."""
    measured, peak_db = _loudness_peak(dry.loudness)
    warnings: list[RenderWarning] = []
    gain_db = 0.0
    normalise = target_lufs is not None and not math.isinf(measured)
    if target_lufs is not None and not normalise:
        warnings.append(RenderWarning("master", "the mix is silent or shorter than 0.4 s; "
                                      "loudness not normalised"))
    if normalise:
        assert target_lufs is not None
        # the sample peak bounds the true peak from below: no more gain than could stay within
        # the limiting allowed, before the first pass says how much it took
        gain_db = min(target_lufs - measured, ceiling_db + max_limiting_db - peak_db)
    if dry.true_peak_db + gain_db <= ceiling_db - TRUE_PEAK_MARGIN_DB:
        done = _scaled_pass(bus, dry, gain_db, sink)
    else:
        done, gain_db = _limited(bus, dry.loudness, sample_rate, gain_db, ceiling_db, loop,
                                 scratch, sink, target_lufs if normalise else None,
                                 max_limiting_db)
    # the trim is a constant gain: it moves the pass's loudness and true peak dB for dB (both
    # meters are linear), so the output is not measured again
    output_lufs, output_peak = done.loudness_after, done.true_peak_db + done.trim_db
    plr = None
    if not (math.isinf(measured) or math.isinf(peak_db)):
        # the sum's true peak before the gain: the deepest reduction is its excess over the
        # ceiling (the limiter's envelope is the meter's detector)
        peak_in = ceiling_db + done.reduction_db if done.reduction_db > 0 else \
            done.true_peak_db
        plr = peak_in - gain_db - measured
    blocked: ElementLevels | None = None
    if normalise:
        assert target_lufs is not None
        final = output_lufs
        if abs(final - target_lufs) > 0.5:
            blocked = _highest_peaks(elements) if final < target_lufs else None
            warnings.append(RenderWarning(
                "master", f"reached {final:.1f} LUFS, not {target_lufs:.1f}: the ceiling of "
                f"{ceiling_db:.1f} dBTP limits {done.reduction_db:.1f} dB"
                + _why_short(final, target_lufs, ceiling_db, max_limiting_db, plr, blocked),
                None, target_lufs, None, final))
    return MasterReport(measured, gain_db, output_lufs, output_peak,
                        done.reduction_db, tuple(warnings), max_limiting_db, plr,
                        blocked.name if blocked else None,
                        blocked.peak_to_loudness_db if blocked else None)


def _scaled_pass(bus: Bus, dry: SumLevels, gain_db: float,
                 sink: Callable[[np.ndarray], None]) -> _Pass:
    """The master where the limiter cannot act: the sum times the gain, block by block, into
    ``sink``. A gain scales what was measured of the sum rather than measure it again: both
    meters are linear, only the absolute gate stays where it is (``_scaled_loudness``)."""
    gain = np.float32(10 ** (gain_db / 20))
    for _, block in bus.blocks():
        block *= gain
        sink(block)
    return _Pass(_scaled_loudness(dry.loudness, gain_db), dry.true_peak_db + gain_db, 0.0,
                 0.0)


def _scaled_loudness(meter: Meter, gain_db: float) -> float:
    """The integrated loudness ``meter`` would read of its signal scaled by ``gain_db``: every
    100 ms energy scales by the gain squared, and the gates are applied to them again (the
    absolute gate does not move with the signal, so a quiet stretch may cross it)."""
    return meter.scaled(10 ** (gain_db / 20)).integrated_loudness()


def _limited(bus: Bus, dry: Meter, sample_rate: int, gain_db: float, ceiling_db: float,
             loop: bool, scratch: Path | None, sink: Callable[[np.ndarray], None],
             target_lufs: float | None, max_limiting_db: float) -> tuple[_Pass, float]:
    """The master where the limiter acts: limit passes into a staged bus, the gain corrected
    between them toward ``target_lufs`` (None: leave it), then the staged output, trimmed, into
    ``sink``. ``dry``: the bus's meter. Returns the last pass and the gain it ran at."""
    with Bus.temporary(bus.channels, bus.frames, scratch) as staged:
        done = _limit_pass(bus, staged, sample_rate, gain_db, ceiling_db, loop, dry)
        if target_lufs is not None:
            # the limiter's deepest reduction grows dB for dB with the gain (it is the peak's
            # excess over the ceiling): one pass says how much gain the allowance leaves
            for _ in range(3):
                over = done.reduction_db - max_limiting_db
                if over > 0.05:
                    step = -over
                else:
                    now = done.loudness_after
                    if abs(now - target_lufs) <= 0.1 or done.reduction_db == 0.0:
                        break
                    step = target_lufs - now
                    if step > 0:
                        step = min(step, max_limiting_db - done.reduction_db)
                    if abs(step) <= 0.05:
                        break
                before = done
                gain_db += step
                done = _limit_pass(bus, staged, sample_rate, gain_db, ceiling_db, loop, dry)
                if step > 0 and over <= 0.05 and \
                        done.loudness_after - before.loudness_after < MIN_MAKEUP_YIELD * step:
                    break  # more gain makes the mix flatter, hardly louder: stop raising it
        trim = np.float32(10 ** (done.trim_db / 20))
        for _, block in staged.blocks():
            if done.trim_db:
                block *= trim
            sink(block)
    return done, gain_db


def _highest_peaks(elements: tuple[ElementLevels, ...]) -> ElementLevels | None:
    """The element whose true peak stands highest in the sum (the loudest PLR breaks a tie)."""
    heard = [e for e in elements if math.isfinite(e.true_peak_dbtp)
             and math.isfinite(e.loudness_lufs)]
    if not heard:
        return None
    return max(heard, key=lambda e: (round(e.true_peak_dbtp, 1), e.peak_to_loudness_db))


def _why_short(final: float, target: float, ceiling_db: float, max_limiting_db: float,
               plr: float | None, blocked: ElementLevels | None) -> str:
    """The rest of the warning: why the target is out of reach and what would reach it."""
    if final > target:  # too loud: the mix is louder than the target without any gain
        return "; raise the target or lower the elements' volumes"
    text = f" (max_limiting {max_limiting_db:g} dB)"
    if plr is not None:
        text += (f": the mix's peaks stand {plr:.1f} dB above its loudness, and "
                 f"{target:.1f} LUFS needs at most {ceiling_db + max_limiting_db - target:.1f}")
    if blocked is not None:
        text += (f"; the highest peaks are {blocked.name}'s ({blocked.peak_to_loudness_db:.1f} "
                 f"dB above its loudness): lower its volume or tame its peaks (a compressor, "
                 f"less level_jitter), or")
    else:
        text += ";"
    return text + " lower the target, raise the ceiling or max_limiting"


WRAP_PRIME_S = 2


def _wrap_frames(bus: Bus, sample_rate: int) -> int:
    """How much of a loop's end primes the limiter before its start: long enough for the
    release (60 ms) to settle, at most the loop itself. (The master effects are primed to
    their steady state: ``_prime_effects``.)"""
    return min(bus.frames, sample_rate * WRAP_PRIME_S)


def _effects_pass(bus: Bus, sample_rate: int, effects: tuple[EffectSpec, ...],
                  loop: bool = False, dest: Bus | None = None) -> Meter:
    """Run the master effects over the bus, into ``dest`` (None: in place, over the bus);
    return the meter of the result, finished (loudness, sample peak and true peak by
    ``LIMITER_DETECTOR``). A chain that cannot stream (``WHOLE_TIMELINE``) runs in overlapping
    segments (``dsp.segments``), as it does on an element."""
    target = bus if dest is None else dest
    meter = Meter(sample_rate, bus.channels, interpolator=LIMITER_DETECTOR)
    if not effects:
        for _, block in bus.blocks():
            meter.add(block)
        return meter.finish()
    # a chain holding a plugin that cannot stream (``WHOLE_TIMELINE``) runs up to it in
    # overlapping segments (``dsp.segments``), as on an element; the rest streams block by block
    segment_fx, stream_fx = split_at_whole_timeline(effects)
    board = build_board(stream_fx) if stream_fx else None
    emitted = 0  # output lags the input while a plugin withholds latency
    skip = 0  # output still to drop: what the primer (a loop's end) produced
    if loop and board is not None and not segment_fx:
        fed, out = _prime_effects(board, bus, sample_rate, effects)
        skip = fed - out

    def emit(wet: np.ndarray) -> None:
        nonlocal emitted, skip
        drop = min(skip, wet.shape[1])
        wet, skip = wet[:, drop:], skip - drop
        k = min(wet.shape[1], bus.frames - emitted)
        if k > 0:  # behind what has been read: writing over the bus is safe
            block = np.ascontiguousarray(wet[:, :k], np.float32)
            target.write(emitted, block)
            meter.add(block)
            emitted += k

    def stream(block: np.ndarray) -> None:
        emit(block if board is None else board(block, sample_rate, reset=False))

    if segment_fx:
        # every read for a later segment lies past what has been handed out (and the
        # streamed part only writes behind that): overwriting the bus is safe
        for wet in segmented(build_board(segment_fx), lambda a, b: bus.read(a, b - a),
                             bus.frames, sample_rate, chain_tail_s(segment_fx)):
            for start in range(0, wet.shape[1], BLOCK):
                stream(wet[:, start:start + BLOCK])
    else:
        for _, block in bus.blocks():
            stream(block)
    zeros = np.zeros((bus.channels, BLOCK), np.float32)
    for _ in range(64):  # drain what latency still holds back
        if emitted >= bus.frames or board is None:
            break
        emit(board(zeros, sample_rate, reset=False))
    if emitted < bus.frames:
        target.write(emitted, np.zeros((bus.channels, bus.frames - emitted), np.float32))
        meter.add(np.zeros((bus.channels, bus.frames - emitted), np.float32))
    return meter.finish()


def _loudness_peak(meter: Meter) -> tuple[float, float]:
    peak = meter.sample_peak
    return meter.integrated_loudness(), 20 * math.log10(peak) if peak > 0 else -math.inf


# Successive turns of a primed loop agree when no 64k-frame block's level moves more than this
# (0.01 dB): the chain has reached its steady state
PRIMED_WITHIN = 10 ** (0.01 / 20) - 1


def _prime_effects(board: Any, bus: Bus, sample_rate: int,
                   effects: tuple[EffectSpec, ...]) -> tuple[int, int]:
    """Run a loop through the master ``board`` until the chain is in the state the loop's own
    end leaves it in when it plays on repeated: the loop's last stretch, as long as the chain's
    tail (at least ``WRAP_PRIME_S``), or, for a loop shorter than that, whole turns of it until
    two turns come out alike block by block (or the tail is covered). Returns the frames fed
    and the frames the board gave back (fewer while a plugin withholds latency); its output is
    dropped."""
    need = max(sample_rate * WRAP_PRIME_S, int(math.ceil(chain_tail_s(effects) * sample_rate)))
    n = bus.frames
    fed = out = 0
    if n >= need:
        for start in range(n - need, n, BLOCK):
            block = bus.read(start, min(BLOCK, n - start))
            fed += block.shape[1]
            out += board(block, sample_rate, reset=False).shape[1]
        return fed, out
    previous: np.ndarray | None = None
    while fed < need:
        levels = []
        for _, block in bus.blocks():
            fed += block.shape[1]
            wet = board(block, sample_rate, reset=False)
            out += wet.shape[1]
            levels.append(float(np.sqrt(np.mean(wet.astype(np.float64) ** 2))) if wet.size
                          else 0.0)
        now = np.array(levels)
        if previous is not None and np.all(
                np.abs(now - previous) <= PRIMED_WITHIN * np.maximum(previous, 1e-9)):
            break
        previous = now
    return fed, out


def _limit_pass(bus: Bus, staged: Bus, sample_rate: int, gain_db: float,
                ceiling_db: float, loop: bool = False,
                dry: Meter | None = None) -> _Pass:
    """Gain and limit the bus into ``staged``, then measure the output. A loop is limited as
    it plays repeated: its end goes in first (that output is dropped) and its start follows
    its end (so the look-ahead sees across the wrap). ``dry``: the bus's meter, when known;
    where the limiter reduces nothing the output is the bus times the gain, whose loudness is
    the bus's scaled (``_scaled_loudness``), not measured again."""
    gain = np.float32(10 ** (gain_db / 20))
    limiter = LimiterStream(sample_rate, bus.channels, ceiling_db)
    pos = 0
    skip = 0
    peak = 0.0  # the output's sample peak

    def take(out: np.ndarray) -> None:
        nonlocal pos, skip, peak
        drop = min(skip, out.shape[1])
        out, skip = out[:, drop:], skip - drop
        out = out[:, :bus.frames - pos]
        if out.shape[1]:
            staged.write(pos, out)
            peak = max(peak, float(np.abs(out).max()))
            pos += out.shape[1]

    blocks: Iterable[np.ndarray] = (block for _, block in bus.blocks())
    if loop:
        prime = _wrap_frames(bus, sample_rate)
        skip = prime
        after = bus.read(0, prime)
        blocks = itertools.chain([bus.read(bus.frames - prime, prime)], blocks, [after])
    for block in blocks:
        take(limiter.push(block * gain))
    take(limiter.finish())
    scaled = dry is not None and limiter.lowest >= 1.0
    # the true peak with the sample peak as the floor from the first block on (measured as the
    # output came, the running peak starts low and most early gaps are interpolated for
    # nothing); the loudness too, unless the gain alone made the output
    meter = Meter(sample_rate, bus.channels, interpolator=LIMITER_DETECTOR,
                  loudness=not scaled, peak_floor=peak)
    for _, block in staged.blocks():
        meter.add(block)
    meter.finish()
    loudness = _scaled_loudness(dry, gain_db) if scaled and dry is not None else \
        meter.integrated_loudness()
    tp = meter.true_peak_db
    aim = ceiling_db - TRUE_PEAK_MARGIN_DB
    trim = aim - tp if tp > aim else 0.0
    return _Pass(loudness, tp, limiter.reduction_db, trim)
