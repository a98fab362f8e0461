"""Loops: where a take loops (seam search) and a loop run computed block by block.

Input: a take at the scene rate and its ``LoopRun``. Output: a ``LoopSource`` whose ``read(a, b)``
gives any frames of the run: the take tiled with crossfades at seam-matched loop points, with the
run's own fades at its ends. The seam search matches the spectral envelope and level (what the
ear hears of noise-like beds) as well as the waveform, on an anti-aliased decimation refined at
the full rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..arrange import LoopRun
from ..dsp.fades import fade_curves


@dataclass(frozen=True)
class LoopPoints:
    """Where a take loops: every copy after the first starts at ``start``, every copy ends at
    ``end``, and ``take[end - xf:end]`` crossfades into ``take[start:start + xf]`` (frames).
    ``correlation`` is that of the two crossfaded segments (mono, full rate)."""

    start: int
    end: int
    correlation: float


SEAM_RATE = 6000  # Hz: the coarse seam search runs on the take decimated to about this rate
SEAM_HOP_S = 0.01  # frame hop of the spectral envelope (s)
_WAVE_WEIGHT_DB = 6.0  # a correlation of 1 weighs as much as 6 dB of envelope mismatch
_LENGTH_WEIGHT_DB = 0.25  # shortening the loop by a whole search window costs 0.25 dB
_WAVE_STARTS = 6  # loop starts whose waveform correlation is searched


def _band_envelope(x: np.ndarray, hop: int) -> np.ndarray:
    """Band powers of Hann-windowed frames ``x[j*hop : j*hop + 2*hop]``: ``(frames, bands)``,
    with bands spaced about a third of an octave apart, each at least three bins wide (so no
    band is a single noisy bin), from the lowest bins to Nyquist."""
    size = 2 * hop
    frames = sliding_window_view(x, size)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)) ** 2
    bins = spec.shape[1]
    edges = [1]
    while edges[-1] < bins:
        edges.append(min(bins, max(edges[-1] + 3, int(edges[-1] * 2 ** (1 / 3)))))
    return np.add.reduceat(spec, edges[:-1], axis=1)


def _segment_corr(head: np.ndarray, tail: np.ndarray, ends: np.ndarray, xf: int) -> np.ndarray:
    """Normalised correlation of ``head`` (``xf`` frames) with ``tail[e-xf:e]`` for each of
    the consecutive ``ends``."""
    from scipy.signal import fftconvolve

    region = tail[ends[0] - xf:ends[-1]]
    num = fftconvolve(region, head[::-1], mode="valid")
    c = np.concatenate([[0.0], np.cumsum(region**2)])
    energy = c[xf:] - c[:-xf]
    # (head * head).sum(), not np.dot: BLAS threads can stall for milliseconds on a busy machine
    return num / (np.sqrt(np.maximum(energy, 0.0) * float((head * head).sum())) + 1e-12)


def _heads_corr(heads: np.ndarray, tail: np.ndarray, ends: np.ndarray, xf: int) -> np.ndarray:
    """``_segment_corr`` for many heads at once ``(heads, xf)`` -> ``(heads, ends)``: the
    tail region is transformed once."""
    from scipy import fft

    region = tail[ends[0] - xf:ends[-1]]
    size = fft.next_fast_len(region.size + xf - 1, real=True)
    # single precision is plenty for ranking candidates
    spec = fft.rfft(region.astype(np.float32), size) * \
        fft.rfft(heads[:, ::-1].astype(np.float32), size, axis=1)
    num = fft.irfft(spec, size, axis=1)[:, xf - 1:region.size]
    c = np.concatenate([[0.0], np.cumsum(region**2)])
    energy = np.maximum(c[xf:] - c[:-xf], 0.0)
    norms = np.sqrt(np.einsum("ij,ij->i", heads, heads))
    return num / (np.sqrt(energy)[None, :] * norms[:, None] + 1e-12)


def best_loop_points(take: np.ndarray, xf: int, sample_rate: int,
                     search_s: float = 2.0) -> LoopPoints:
    """Choose the loop points of a take: an end in its last ``search_s`` and a start in its
    first ``search_s / 2`` (at most a quarter of the take) whose crossfade hides the seam best.

    What is matched: the short-time spectral envelope and level of the two crossfaded segments
    (what the ear hears of noise-like beds, where waveform correlation is near zero at any
    lag), and their waveform correlation (what a tonal drone needs to cross without a dip or
    beat). The search runs on an anti-aliased decimation to about ``SEAM_RATE`` and on 10 ms
    envelope frames (the waveform only for the few starts whose envelope matches best); the
    best few candidates are refined at the full rate, sample by sample.
    Ties go to the longest loop: it repeats least audibly.
    """
    n = take.shape[1]
    if xf <= 0:
        return LoopPoints(0, n, 0.0)
    search = int(search_s * sample_rate)
    e_lo = max(2 * xf, n - search, n // 2)
    if e_lo >= n:
        return LoopPoints(0, n, 0.0)
    s_hi = max(0, min(search // 2, n // 4, e_lo - 2 * xf))
    mono = take.mean(axis=0, dtype=np.float64)
    q = max(1, sample_rate // SEAM_RATE)
    hop = q * max(1, round(SEAM_HOP_S * sample_rate / q))
    # envelope frames of the head region and of the tail region only: the cost does not
    # grow with the take's length
    starts = np.arange(0, s_hi + 1, hop)
    ends = np.arange(n, e_lo - 1, -hop)[::-1]
    nframes = xf // hop - 1
    if nframes >= 1:
        head_env = _band_envelope(mono[: starts[-1] + xf], hop)
        tail0 = ends[0] - xf
        tail_env = _band_envelope(mono[tail0:n], hop)
        floor = 1e-5 * max(head_env.max(initial=0.0), tail_env.max(initial=0.0)) + 1e-30

        def window_db(env: np.ndarray, firsts: np.ndarray) -> np.ndarray:
            c = np.concatenate([np.zeros((1, env.shape[1])), np.cumsum(env, axis=0)])
            firsts = np.clip(firsts, 0, env.shape[0] - nframes)
            return 10 * np.log10(np.maximum((c[firsts + nframes] - c[firsts]) / nframes, floor))

        h_db = window_db(head_env, starts // hop)
        t_db = window_db(tail_env, (ends - xf - tail0 + hop // 2) // hop)
        spectral = np.sqrt(((h_db[:, None, :] - t_db[None, :, :]) ** 2).mean(axis=2))
    else:  # crossfades shorter than two frames: waveform only
        spectral = np.zeros((starts.size, ends.size))

    # coarse waveform correlation on an anti-aliased decimation
    from scipy.signal import resample_poly

    margin = 16 * q
    lo = max(0, e_lo - xf - margin)
    dec_tail = resample_poly(mono[lo:], 1, q) if q > 1 else mono[lo:]
    dec_head = resample_poly(mono[: s_hi + xf + margin], 1, q) if q > 1 else mono
    xd = max(1, xf // q)
    dec_ends = np.arange(-(-(e_lo - lo) // q), (n - lo) // q + 1)  # in dec_tail's frames
    dec_ends = dec_ends[(dec_ends >= xd) & (dec_ends <= dec_tail.size)]
    e_full = lo + dec_ends * q
    # waveform correlation only for the starts whose envelope matches best (and the take's
    # own start): the envelope ranks starts, the waveform then finds the phase
    row_cost = spectral.min(axis=1) + _LENGTH_WEIGHT_DB * starts / max(search, 1)
    rows = np.union1d([0], np.argsort(row_cost, kind="stable")[:_WAVE_STARTS])
    starts, spectral = starts[rows], spectral[rows]
    shorter = (n - e_full)[None, :] + starts[:, None]
    r = _heads_corr(np.stack([dec_head[s // q:s // q + xd] for s in starts]), dec_tail,
                    dec_ends, xd)
    cost = np.stack([np.interp(e_full, ends, row) for row in spectral])
    cost += _WAVE_WEIGHT_DB * (1 - r)
    cost += _LENGTH_WEIGHT_DB * shorter / max(search, 1)

    # refine the best few at the full rate, within one decimation step either side
    best: tuple[float, int, int, float] | None = None
    flat_cost = cost.ravel()
    order = np.argpartition(flat_cost, min(4, flat_cost.size - 1))[:4]
    for flat in order:
        i, k = np.unravel_index(flat, cost.shape)
        s = int(starts[i])
        e_mid = int(e_full[k])
        cand = np.arange(max(e_lo, e_mid - q), min(n, e_mid + q) + 1)
        if cand.size == 0:
            continue
        rf = _segment_corr(mono[s:s + xf], mono, cand, xf)
        spec = np.interp(cand, ends, spectral[i])
        c = spec + _WAVE_WEIGHT_DB * (1 - rf) + _LENGTH_WEIGHT_DB * (n - cand + s) / search
        j = int(np.argmin(c))
        if best is None or c[j] < best[0]:
            best = (float(c[j]), s, int(cand[j]), float(rf[j]))
    if best is None:
        return LoopPoints(0, n, 0.0)
    _, s, e, corr = best
    return LoopPoints(s, e, float(np.clip(corr, -1.0, 1.0)))


class LoopSource:
    """A loop run, computed block by block: the take tiled with crossfades at seam-matched
    loop points, with the run's own fades at its ends.

    Copy k of the take plays ``take[start:end]`` (the first copy ``take[:end]``, intro
    included) with take frame i at run frame ``k * period + i``, ``period = end - start - xf``.
    Every copy but the first fades in over ``take[start:start + xf]``; every copy followed by
    another fades out over its last ``xf`` frames. The copy that really is last (no copy
    starts before the run ends) plays on unfaded, so the run's end keeps the body's level
    wherever it lands. The crossfade gains a=cos, b=sin are normalised by sqrt(a^2+b^2+2ab*r),
    r being the measured correlation of the two overlapping segments, so the crossfade keeps
    the level constant for uncorrelated (equal-power) and correlated (equal-gain) material
    alike.
    """

    def __init__(self, take: np.ndarray, run: LoopRun, sample_rate: int, start: int,
                 limit: int | None = None, points: LoopPoints | None = None) -> None:
        xf = int(round(run.crossfade_s * sample_rate))
        xf = min(xf, take.shape[1] // 2)
        # ``points``: reuse a search already made for this take and crossfade
        pts = best_loop_points(take, xf, sample_rate) if points is None else points
        self.points = pts
        s, e = pts.start, pts.end
        xf = min(xf, (e - s) // 2)
        self.period = e - s - xf
        if run.end_s is None:
            length = max((run.times or 1) - 1, 0) * self.period + e
        else:
            length = int(round(run.end_s * sample_rate)) - start
        if limit is not None:
            length = min(length, limit)
        self.start, self.length, self.pan = start, max(length, 0), run.pan
        self.channels = take.shape[0]
        self.loop_start, self.e, self.xf = s, e, xf
        self._take = take if take.dtype == np.float32 else take.astype(np.float32)
        t = np.linspace(0.0, 1.0, xf, endpoint=False) + 0.5 / max(xf, 1)
        a, b = np.cos(t * math.pi / 2), np.sin(t * math.pi / 2)
        norm = np.sqrt(a * a + b * b + 2 * a * b * max(pts.correlation, 0.0))
        self._gain_in = (b / norm).astype(np.float32)
        self._gain_out = (a / norm).astype(np.float32)
        self._fade_in, self._fade_out = fade_curves(
            min(int(run.fade_in_s * sample_rate), self.length),
            min(int(run.fade_out_s * sample_rate), self.length))
        if run.wraps and 0 < self._fade_in.size == self._fade_out.size < self.length:
            self._normalise_wrap()

    def _normalise_wrap(self) -> None:
        """A run that crossfades into itself at a loopable mix's wrap (its fade-out past the
        end is added onto its fade-in): normalise the two fades by the correlation of what
        they overlap, as the seams are, so a tonal bed keeps its level across the wrap
        instead of summing to +3 dB."""
        fin, fout = self._fade_in, self._fade_out
        self._fade_in = self._fade_out = np.zeros(0, np.float32)
        k = fin.size
        head, tail = self.read(0, k), self.read(self.length - k, self.length)
        energy = math.sqrt(float(np.sum(head.astype(np.float64) ** 2))
                           * float(np.sum(tail.astype(np.float64) ** 2)))
        r = float(np.sum(head.astype(np.float64) * tail)) / energy if energy > 0 else 0.0
        norm = np.sqrt(fin.astype(np.float64) ** 2 + fout.astype(np.float64) ** 2
                       + 2 * fin * fout * max(min(r, 1.0), 0.0))
        self._fade_in = (fin / norm).astype(np.float32)
        self._fade_out = (fout / norm).astype(np.float32)

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames [a, b) of the run (0 = its start)."""
        out = np.zeros((self.channels, b - a), dtype=np.float32)
        s, e, xf, period, length = self.loop_start, self.e, self.xf, self.period, self.length
        b = min(b, length)
        if period <= 0 or b <= a:
            return out
        k = max(0, (a - e) // period + 1)
        while k * period + (s if k else 0) < b:
            pos = k * period
            first = s if k else 0
            i0, i1 = max(a - pos, first), min(b - pos, e)
            if i1 > i0:
                seg = self._take[:, i0:i1].copy()
                if k and i0 < s + xf:  # fades in over the crossfade
                    j1 = min(i1, s + xf)
                    seg[:, : j1 - i0] *= self._gain_in[i0 - s:j1 - s]
                if (k + 1) * period + s < length and i1 > e - xf:  # another copy follows
                    j0 = max(i0, e - xf)
                    seg[:, j0 - i0:] *= self._gain_out[j0 - (e - xf):i1 - (e - xf)]
                out[:, pos + i0 - a:pos + i1 - a] += seg
            k += 1
        fin, fout = self._fade_in, self._fade_out
        if fin.size and a < fin.size:
            out[:, : min(b, fin.size) - a] *= fin[a:min(b, fin.size)]
        if fout.size and b > length - fout.size:
            f0 = max(a, length - fout.size)
            out[:, f0 - a:b - a] *= fout[f0 - (length - fout.size):b - (length - fout.size)]
        return out


def loop_seams(take: np.ndarray, run: LoopRun, sample_rate: int,
               total: int) -> dict[str, Any]:
    """What the manifest tells about a loop run beyond its plan: its real length and its seams.

    The mixer picks the loop point from the audio, so the seams are asked of the same
    ``LoopSource`` that renders the run. A seam is where copy k (k >= 1) fades in over the
    crossfade; ``seams_s`` holds the scene times where each crossfade starts.
    """
    start = int(round(run.start_s * sample_rate))
    src = LoopSource(take, run, sample_rate, start, max(0, total - start))
    xf = src.xf
    # copy k >= 1 plays take[loop_start:end] from run frame k * period + loop_start
    seams = []
    k = 1
    while src.period > 0 and k * src.period + src.loop_start < src.length:
        seams.append(round((start + k * src.period + src.loop_start) / sample_rate, 6))
        k += 1
    return {"length_s": round(src.length / sample_rate, 6), "seams_s": seams,
            "seam_crossfade_s": round(xf / sample_rate, 6),
            "fade_in_s": run.fade_in_s, "fade_out_s": run.fade_out_s}
