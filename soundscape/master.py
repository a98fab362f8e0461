"""Master stage: loudness normalisation (ITU-R BS.1770-4) and a true-peak limiter.

Input: the pre-master mix, float32 ``(channels, frames)``. Output: the mastered mix and a report
of what was measured and done. Loudness and true peak are read by ``meter`` (pyloudnorm's
K-weighting, streamed). The limiter looks ahead and works from the oversampled peak envelope
(BS.1770-4 Annex 2's method, at 8x with the meter's own detector), so inter-sample peaks stay
under the ceiling without hard clipping, and the release recovers with its time constant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .dsp.bus import BLOCK, Bus
from .dsp.effects import WHOLE_TIMELINE, EffectSpec, build_board
from .dsp.meter import TRUE_PEAK, Meter, measure
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
        tp = measure(out, sample_rate, interpolator=LIMITER_DETECTOR,
                     loudness=False).true_peak_db
        if tp <= ceiling_db:
            break
        out *= np.float32(10 ** ((ceiling_db - tp - 0.02) / 20))
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
        ahead = sliding_window_view(need, self.la)[:m].min(axis=1)
        ahead_db = 20 * np.log10(np.maximum(ahead, 1e-12).astype(np.float64))
        gain_db, self._state_db = release_envelope(ahead_db, self.release_frames, self._state_db)
        both = np.concatenate([self._carry, 10 ** (gain_db / 20)])
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


@dataclass(frozen=True)
class MasterReport:
    input_lufs: float
    gain_db: float
    output_lufs: float
    true_peak_dbtp: float
    limiter_reduction_db: float
    warnings: tuple[RenderWarning, ...] = ()


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


def master_bus(bus: Bus, sample_rate: int, target_lufs: float | None, ceiling_db: float,
               effects: tuple[EffectSpec, ...], sink: Callable[[np.ndarray], None],
               scratch: Path | None = None, loop: bool = False) -> MasterReport:
    """Master the sum in ``bus`` and hand the result to ``sink`` block by block, in order.

    The master ``effects`` run first (streamed, their output written back over the bus);
    the result is normalised to ``target_lufs`` (None: leave the level) and limited to
    ``ceiling_db``. Limiting lowers loudness a little, so the gain is corrected and the limiter
    run again until the result is within 0.1 LU of the target (at most three more passes).
    A last constant trim catches the limiter's residual error against the true-peak meter.

    Every pass reads the bus block by block and the limiter's output is staged in a second
    bus (on disk beside ``scratch`` when long), so memory stays flat at any length.

    ``loop``: the bus is a loop (``Bus.fold``): the effects and the limiter start with the
    state its end leaves them in, and the limiter looks ahead across the wrap into its start.
    """
    channels, frames = bus.channels, bus.frames
    measured = _effects_pass(bus, sample_rate, effects, loop)
    warnings: list[RenderWarning] = []
    gain_db = 0.0
    if target_lufs is not None:
        if math.isinf(measured):
            warnings.append(RenderWarning("master", "the mix is silent or shorter than 0.4 s; "
                                          "loudness not normalised"))
        else:
            gain_db = target_lufs - measured
    with Bus.temporary(channels, frames, scratch) as staged:
        done = _limit_pass(bus, staged, sample_rate, gain_db, ceiling_db, loop)
        if target_lufs is not None and not math.isinf(measured):
            for _ in range(3):
                now = done.loudness_after
                if abs(now - target_lufs) <= 0.1 or done.reduction_db == 0.0:
                    break
                gain_db += target_lufs - now
                done = _limit_pass(bus, staged, sample_rate, gain_db, ceiling_db, loop)
        trim = np.float32(10 ** (done.trim_db / 20))
        result = Meter(sample_rate, channels)
        for _, block in staged.blocks():
            if done.trim_db:
                block *= trim
            result.add(block)
            sink(block)
        result.finish()
    if target_lufs is not None and not math.isinf(measured):
        final = result.integrated_loudness()
        if abs(final - target_lufs) > 0.5:
            warnings.append(RenderWarning(
                "master", f"reached {final:.1f} LUFS, not {target_lufs:.1f}: the ceiling of "
                f"{ceiling_db:.1f} dBTP limits {done.reduction_db:.1f} dB; lower the target or "
                f"raise the ceiling", None, target_lufs, None, final))
    return MasterReport(measured, gain_db, result.integrated_loudness(), result.true_peak_db,
                        done.reduction_db, tuple(warnings))


WRAP_PRIME_S = 2


def _wrap_frames(bus: Bus, sample_rate: int) -> int:
    """How much of a loop's end primes the effects and the limiter before its start: long
    enough for the release (60 ms) and short tails to settle, at most the loop itself."""
    return min(bus.frames, sample_rate * WRAP_PRIME_S)


def _effects_pass(bus: Bus, sample_rate: int, effects: tuple[EffectSpec, ...],
                  loop: bool = False) -> float:
    """Run the master effects over the bus in place; return the integrated loudness of the
    result. A chain that cannot stream (``WHOLE_TIMELINE``) runs over the whole timeline at
    once, as it does on an element."""
    meter = Meter(sample_rate, bus.channels, true_peak=False)
    if not effects:
        for _, block in bus.blocks():
            meter.add(block)
        return meter.finish().integrated_loudness()
    board = build_board(effects)
    if any(fx.name in WHOLE_TIMELINE for fx in effects):
        wet = np.ascontiguousarray(board(bus.read(0, bus.frames), sample_rate), np.float32)
        bus.write(0, wet)
        for start in range(0, bus.frames, BLOCK):
            meter.add(wet[:, start:start + BLOCK])
        return meter.finish().integrated_loudness()
    emitted = 0  # output lags the input while a plugin withholds latency
    skip = 0  # output still to drop: what the primer (a loop's end) produced
    if loop:
        prime = _wrap_frames(bus, sample_rate)
        skip = prime
        primer = bus.read(bus.frames - prime, prime)

    def emit(wet: np.ndarray) -> None:
        nonlocal emitted, skip
        drop = min(skip, wet.shape[1])
        wet, skip = wet[:, drop:], skip - drop
        k = min(wet.shape[1], bus.frames - emitted)
        if k > 0:  # behind what has been read: writing over the bus is safe
            block = np.ascontiguousarray(wet[:, :k], np.float32)
            bus.write(emitted, block)
            meter.add(block)
            emitted += k

    if loop:
        for start in range(0, primer.shape[1], BLOCK):
            emit(board(primer[:, start:start + BLOCK], sample_rate, reset=False))
    for _, block in bus.blocks():
        emit(board(block, sample_rate, reset=False))
    zeros = np.zeros((bus.channels, BLOCK), np.float32)
    for _ in range(64):  # drain what latency still holds back
        if emitted >= bus.frames:
            break
        emit(board(zeros, sample_rate, reset=False))
    if emitted < bus.frames:
        bus.write(emitted, np.zeros((bus.channels, bus.frames - emitted), np.float32))
        meter.add(np.zeros((bus.channels, bus.frames - emitted), np.float32))
    return meter.finish().integrated_loudness()


def _limit_pass(bus: Bus, staged: Bus, sample_rate: int, gain_db: float,
                ceiling_db: float, loop: bool = False) -> _Pass:
    """Gain and limit the bus into ``staged``, measuring the output as it goes. A loop is
    limited as it plays repeated: its end goes in first (that output is dropped) and its start
    follows its end (so the look-ahead sees across the wrap)."""
    gain = np.float32(10 ** (gain_db / 20))
    limiter = LimiterStream(sample_rate, bus.channels, ceiling_db)
    meter = Meter(sample_rate, bus.channels, interpolator=LIMITER_DETECTOR)
    pos = 0
    skip = 0

    def take(out: np.ndarray) -> None:
        nonlocal pos, skip
        drop = min(skip, out.shape[1])
        out, skip = out[:, drop:], skip - drop
        out = out[:, :bus.frames - pos]
        if out.shape[1]:
            staged.write(pos, out)
            meter.add(out)
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
    meter.finish()
    tp = meter.true_peak_db
    trim = ceiling_db - tp - 0.02 if tp > ceiling_db else 0.0
    return _Pass(meter.integrated_loudness(), tp, limiter.reduction_db, trim)
