"""Steady loops: where an element's output starts repeating its loop, so the rest is copied.

Input: the output blocks of one element whose input repeats with a known period (a loop run,
through time-invariant effects). Output: once a whole period of output equals the one before
it (within the effects' own rounding noise), that period, to be played again instead of being
computed: a bed looped for an hour runs through its effects and meter for a few periods, not
for the hour.

Filters, delays and compressors fed a loop settle into it exactly, sample for sample. A
reverb's feedback keeps a float rounding noise that never repeats exactly (-110 to -93 dB
under the output's peak, the larger the room); ``TOLERANCE_DB`` admits it, so a copied period
differs from the one a longer computation would give by no more than that noise. A chain that
does not settle (a reverb close to infinite) is never copied.

One period repeating is not enough: a chain remembers more than it shows. A delay longer than
the period holds its first echo unheard (the output repeats before the echo comes out), and
an echo fed back settles by a little each period (two periods within -90 dB of each other,
the rest still drifts further); a gate's envelope climbs under its threshold, unseen, until
it opens. So the output must repeat for a period plus the chain's ``memory``
(``effects.chain_memory_s``: its tail, its level detectors' attack and release).
"""

from __future__ import annotations

import math

import numpy as np

TOLERANCE_DB = -90.0  # under the output's peak: what a settled period may differ by
MAX_PERIOD_BYTES = 64 << 20  # a longer period (a long take at a high rate) is not watched


class SteadyLoop:
    """Watches output frames ``[start, end)`` of a signal whose input repeats every ``period``
    frames there, through a chain that remembers ``memory`` frames. Give it the output blocks
    in order (``add``); ``settled`` says when the last ``period + memory`` frames equal,
    each, the frame a period before; ``tile`` then gives any later frames as copies of the
    last period."""

    def __init__(self, period: int, channels: int, start: int, end: int,
                 memory: int = 0) -> None:
        self.period, self.start, self.end, self.memory = period, start, end, memory
        self._ring = np.zeros((channels, period), np.float32)  # frame t at t % period
        self._first: int | None = None  # the first frame kept
        self._next = start  # the frame the next block must begin with
        self._same_since: int | None = None  # frames from here on equal those a period before
        self._peak = 0.0

    @classmethod
    def possible(cls, period: int, channels: int, start: int, end: int,
                 memory: int = 0) -> bool:
        """Whether watching can pay: a period that fits in memory and a stretch that holds
        at least four of them (two to settle, one to compare, one to copy) and the chain's
        memory."""
        return period > 0 and period * channels * 4 <= MAX_PERIOD_BYTES \
            and end - start >= 4 * period + memory

    def add(self, pos: int, block: np.ndarray) -> None:
        """The output frames ``[pos, pos + n)`` (frames outside ``[start, end)`` are not
        watched; a gap in the frames starts the watch anew)."""
        a, b = max(pos, self.start), min(pos + block.shape[1], self.end)
        if b <= a:
            return
        if a != self._next:
            self._first = self._same_since = None
        if self._first is None:
            self._first = a
        p = self.period
        t = a
        while t < b:
            r = t % p
            k = min(b - t, p - r)
            chunk = block[:, t - pos:t - pos + k]
            self._peak = max(self._peak, float(np.abs(chunk).max(initial=0.0)))
            same = t - p >= self._first and float(np.abs(chunk - self._ring[:, r:r + k]).max(
                initial=0.0)) <= tolerance(self._peak)
            if not same:
                self._same_since = None
            elif self._same_since is None:
                self._same_since = t
            self._ring[:, r:r + k] = chunk
            t += k
        self._next = b

    @property
    def settled(self) -> bool:
        """Whether the last ``period + memory`` frames given equal, each, the frame a period
        before."""
        return self._same_since is not None \
            and self._next - self._same_since >= self.period + self.memory

    def copies(self, input_at: int, output_at: int, limit: int) -> int:
        """How many periods may be copied from output frame ``output_at`` (the next after the
        last given) on, the input having been read up to ``input_at``: as many as keep the
        input inside the repeating stretch, and the output under ``limit``."""
        if not self.settled or output_at != self._next:
            return 0
        room = min(self.end - input_at, limit - output_at)
        return max(0, room // self.period)

    def hopeless(self, input_at: int) -> bool:
        """Whether, the input read up to ``input_at``, no period can be copied any more."""
        return self.end - input_at < self.period

    def tile(self, pos: int, n: int) -> np.ndarray:
        """Output frames ``[pos, pos + n)`` as copies of the settled period."""
        out = np.empty((self._ring.shape[0], n), np.float32)
        done = 0
        while done < n:
            r = (pos + done) % self.period
            k = min(n - done, self.period - r)
            out[:, done:done + k] = self._ring[:, r:r + k]
            done += k
        return out


def tolerance(peak: float) -> float:
    """The largest difference a settled period may show at this output ``peak``."""
    return peak * math.pow(10.0, TOLERANCE_DB / 20)
