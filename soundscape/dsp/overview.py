"""Overviews: the peak and RMS of a signal in equal slices, as the audition page draws it.

Input: float32 ``(channels, frames)`` blocks in time order (a file as it is read, or a stem or
mix as it is written). Output: ``{"bins", "seconds_per_bin", "peak_db", "rms_db"}`` in whole dB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OVERVIEW_BINS = 2000
FLOOR_DB = -90  # overviews are clipped here; quieter reads as silence


class OverviewAccumulator:
    """``overview``'s sums, fed block by block in order: the peak and power of each bin.

    Each block is cut where it crosses a bin edge (a few cuts per block, found among the edges
    rather than frame by frame) and reduced per piece.
    """

    def __init__(self, frames: int, channels: int, bins: int = OVERVIEW_BINS) -> None:
        self.frames, self.channels = frames, channels
        self.n = max(1, min(bins, frames))
        # bin k covers frames [edges[k], edges[k + 1])
        self.edges = np.linspace(0, frames, self.n + 1).round().astype(np.int64)
        self.peak = np.zeros(self.n, dtype=np.float64)
        self.power = np.zeros(self.n, dtype=np.float64)
        self.pos = 0

    def add(self, block: np.ndarray) -> None:
        """The next ``(channels, m)`` frames."""
        pos, m = self.pos, block.shape[1]
        if m == 0:
            return
        edges = self.edges
        inside = edges[(edges > pos) & (edges < pos + m)] - pos  # sorted: np.unique without
        inside = inside[np.diff(inside, prepend=-1) > 0]  # importing numpy.ma (8 ms)
        starts = np.concatenate([[0], inside]).astype(np.intp)
        ends = np.append(starts[1:], m)
        b = np.searchsorted(edges, pos + starts, side="right") - 1
        peak = np.zeros(starts.size, np.float32)
        power = np.zeros(starts.size, np.float64)
        for row in block:  # row by row, piece by piece: reductions without temporaries
            np.maximum(peak, np.maximum.reduceat(row, starts), out=peak)
            np.maximum(peak, -np.minimum.reduceat(row, starts), out=peak)
            for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
                piece = row[s:e]
                # summed in float32 (ample for whole dB); einsum, not np.dot: BLAS would wake
                # threads that spin on the cores the other stem processes need
                power[k] += float(np.einsum("i,i->", piece, piece))
        self.peak[b] = np.maximum(self.peak[b], peak)
        self.power[b] += power
        self.pos = pos + m

    def result(self, sample_rate: float) -> dict[str, Any]:
        """``overview``'s answer for what was added."""
        n, frames = self.n, self.frames
        counts = np.diff(self.edges).astype(np.float64) * self.channels
        rms = np.sqrt(self.power / np.maximum(counts, 1))
        return {"bins": n, "seconds_per_bin": frames / n / sample_rate if sample_rate else 0.0,
                "peak_db": _db(self.peak), "rms_db": _db(rms)}


def _db(x: np.ndarray) -> list[int]:
    with np.errstate(divide="ignore"):
        v = 20 * np.log10(x)
    return np.clip(np.nan_to_num(v, neginf=FLOOR_DB), FLOOR_DB, 24).round().astype(int).tolist()
