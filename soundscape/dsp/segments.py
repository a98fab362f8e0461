"""Effects stage, for chains that cannot stream: a long timeline through a pedalboard chain in
overlapping segments, so memory stays flat at any length.

Input: a pedalboard chain, a reader of the dry timeline (``read(start, stop)`` -> float32
``(channels, stop - start)``), its length in frames. Output: the wet timeline, yielded in
consecutive pieces that together cover ``[0, total)``, each placed to the sample.

Why segments: pedalboard 0.9's ``PitchShift`` primes Rubber Band with a second of silence held
in a delay line, and that line is cleared on every call, so with ``reset=False`` each call
drops a second of audio; its stretcher's state cannot be carried any other way. Each segment is
therefore one ordinary call, begun a pre-roll earlier (the chain's magnitudes, transient
history and tails settle) and run a post-roll past the join (the stretcher's look-ahead).

Why a crossfade, and which: a phase vocoder accumulates each partial's phase from where it
started, so two runs begun at different times agree in magnitude but not in phase, at any
pre-roll. The joins are 50 ms crossfades whose gains are normalised by the measured
correlation of the two runs (as loop seams are), and the next run's start is chosen among
nearby ones for the crossfade that best keeps its level, so a tonal partial is not cancelled at
the join. The first segment is the whole call's output to the bit; the others match it in level
(and in placement), not in phase (tests/test_segmented_effects.py gives the figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

SEGMENT_S = 30.0  # output per call: ~23 MB at 96 kHz stereo, held about three times
PRE_ROLL_S = 0.5  # before the join, plus the chain's tail: state and tails settle
MAX_TAIL_S = 10.0  # of a longer tail (a delay fed back for minutes) the rest is not waited for
POST_ROLL_S = 0.5  # past the join: Rubber Band's look-ahead is well under this
LOOK_AHEAD_S = 0.1  # past a candidate's crossfade (its output there is only compared)
CROSSFADE_S = 0.05
# Candidate starts of the next run: the join itself, then 1.25 ms apart up to 8.75 ms, then
# doubling from 10 ms to 1.28 s earlier. A partial's phase offset between two runs grows with how
# far apart they began, at a rate set by its frequency and the shift: the close ones serve fast
# rates (a high tone, a large shift), the doubling ones slow rates (a small shift of a low tone).
SEARCH_STEP_S = 0.00125
SEARCH_CLOSE = 8
SEARCH_FAR_S = tuple(0.01 * 2 ** k for k in range(8))
CLEAN_JOIN_DB = 0.25  # a candidate whose crossfade keeps this close to its due level wins
JOIN_WINDOWS = 5  # sub-windows of the crossfade whose level is checked (10 ms each)
INCOHERENT = 0.2  # three candidates all within this of 0: noise-like, a search cannot help


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    energy = math.sqrt(float(np.sum(a64 * a64)) * float(np.sum(b64 * b64)))
    return float(np.sum(a64 * b64)) / energy if energy > 0 else 1.0


def crossfade_gains(frames: int, correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Fade-out and fade-in gains (float32, ``frames`` long): cos/sin normalised by
    ``sqrt(a^2 + b^2 + 2ab r)``, so the sum keeps its level whether the two signals are
    uncorrelated (r = 0, equal power) or alike (r = 1, equal gain); down to r = -0.5 (a tone
    120 degrees out, kept at its level by unit gains) it compensates, below that it cannot."""
    t = (np.arange(frames) + 0.5) / max(frames, 1)
    a, b = np.cos(t * math.pi / 2), np.sin(t * math.pi / 2)
    norm = np.sqrt(a * a + b * b + 2 * a * b * min(max(correlation, -0.5), 1.0))
    return (a / norm).astype(np.float32), (b / norm).astype(np.float32)


def _join_error_db(out: np.ndarray, into: np.ndarray, r: float) -> float:
    """How far (dB) the crossfade of ``out`` into ``into`` strays, in 5 sub-windows, from the
    level a crossfade should have there: the fade's mix of the two signals' own levels."""
    fade_out, fade_in = crossfade_gains(out.shape[1], r)
    y = out * fade_out + into * fade_in
    k = max(1, out.shape[1] // JOIN_WINDOWS)
    worst = 0.0
    for i in range(JOIN_WINDOWS):
        w = slice(i * k, (i + 1) * k)
        c = math.cos((i + 0.5) / JOIN_WINDOWS * math.pi / 2)
        want = c * c * _power(out[:, w]) + (1 - c * c) * _power(into[:, w])
        got = _power(y[:, w])
        if want > 0 and got > 0:
            worst = max(worst, abs(10 * math.log10(got / want)))
        elif want > 0 or got > 0:
            return math.inf
    return worst


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0


def segment_ends(total: int, segment: int) -> list[int]:
    """Where the joins fall: every ``segment`` frames, the last segment taking up a remainder
    shorter than half a segment."""
    ends = []
    e = segment
    while total - e > segment // 2:
        ends.append(e)
        e += segment
    return ends


class _Layout:
    """Frame counts of one timeline's segments at ``sample_rate``."""

    def __init__(self, sample_rate: int, tail_s: float, segment_s: float | None) -> None:
        self.pre = int(round((PRE_ROLL_S + min(tail_s, MAX_TAIL_S)) * sample_rate))
        self.post = int(round(POST_ROLL_S * sample_rate))
        self.look = int(round(LOOK_AHEAD_S * sample_rate))
        self.xf = max(1, int(round(CROSSFADE_S * sample_rate)))
        step = SEARCH_STEP_S * sample_rate
        self.offsets = [int(round(k * step)) for k in range(SEARCH_CLOSE)] + [
            int(round(far * sample_rate)) for far in SEARCH_FAR_S]
        reach = self.pre + self.offsets[-1]  # how far before a join a run may begin
        # longer than a run reaches back, so later reads stay past what has been handed out
        self.segment = max(
            int(round((SEGMENT_S if segment_s is None else segment_s) * sample_rate)),
            2 * (reach + self.xf + self.post))


def joins(total: int, sample_rate: int, tail_s: float = 0.0,
          segment_s: float | None = None) -> list[int]:
    """The frames where ``segmented`` joins one run to the next (empty: one call)."""
    return segment_ends(total, _Layout(sample_rate, tail_s, segment_s).segment)


def segmented(board: Any, read: Callable[[int, int], np.ndarray], total: int,
              sample_rate: int, tail_s: float = 0.0,
              segment_s: float | None = None) -> Iterator[np.ndarray]:
    """Run ``board`` over the timeline that ``read`` gives, in overlapping calls.

    Args:
        board: a ``pedalboard.Pedalboard`` (each call resets it).
        read: dry frames ``[start, stop)`` as float32 ``(channels, stop - start)``.
        total: the timeline's length in frames.
        sample_rate: Hz.
        tail_s: how long the chain rings (its state settles within the pre-roll).
        segment_s: output per call (default ``SEGMENT_S``); a timeline shorter than one and
            a half segments is one call, exactly as before segments.

    Yields:
        Consecutive float32 ``(channels, n)`` pieces of the wet timeline, frame ``i`` of the
        output at frame ``i`` of the input, ``total`` frames in all. Every read for later
        pieces lies past what has been yielded, so a caller may overwrite the timeline in
        place behind it.
    """
    lay = _Layout(sample_rate, tail_s, segment_s)
    pre, post, xf, offsets = lay.pre, lay.post, lay.xf, lay.offsets

    def run(a: int, b: int) -> np.ndarray:
        return np.asarray(board(read(a, b), sample_rate), dtype=np.float32)

    ends = segment_ends(total, lay.segment)
    if total <= 0:
        return
    if not ends:
        yield run(0, total)
        return
    cur_start, done = 0, 0
    cur = run(0, min(total, ends[0] + xf + post))
    for i, end in enumerate(ends):
        nxt_stop = total if i + 1 == len(ends) else min(total, ends[i + 1] + xf + post)
        out = cur[:, end - cur_start:end + xf - cur_start]
        best_err, best_s = math.inf, end - pre
        seen = []
        for offset in offsets:
            s = end - pre - offset
            cand = run(s, end + xf + lay.look)
            into = cand[:, end - s:end + xf - s]
            r = _correlation(out, into)
            err = _join_error_db(out, into, r)
            seen.append(abs(r))
            if err < best_err:
                best_err, best_s = err, s
            if err <= CLEAN_JOIN_DB or (len(seen) >= 3 and max(seen) < INCOHERENT):
                break
        nxt = run(best_s, nxt_stop)  # read before anything up to the join is handed out
        into = nxt[:, end - best_s:end + xf - best_s]
        fade_out, fade_in = crossfade_gains(xf, _correlation(out, into))
        yield cur[:, done - cur_start:end - cur_start]
        yield out * fade_out + into * fade_in
        cur, cur_start, done = nxt, best_s, end + xf
    yield cur[:, done - cur_start:total - cur_start]
