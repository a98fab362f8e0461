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

from ..arrange import MAX_CROSSFADE_SHARE, LoopRun
from ..dsp.fades import fade_curves


@dataclass(frozen=True)
class LoopPoints:
    """Where a take loops: every copy after the first starts at ``start``, every copy ends at
    ``end``, and ``take[end - xf:end]`` crossfades into ``take[start:start + xf]`` (frames).
    ``correlation`` is that of the two crossfaded segments (mono, full rate)."""

    start: int
    end: int
    correlation: float


SEAM_RATE = 8000  # Hz: the coarse seam search runs on the take resampled to this rate
SEAM_HOP_S = 0.01  # frame hop of the spectral envelope (s)
_WAVE_WEIGHT_DB = 6.0  # a correlation of 1 weighs as much as 6 dB of envelope mismatch
_LENGTH_WEIGHT_DB = 0.25  # shortening the loop by a whole search window costs 0.25 dB
_WAVE_STARTS = 6  # loop starts whose waveform correlation is searched
# Loops within this much of the best seam's cost (dB of envelope mismatch, or 1/6 of a unit of
# correlation) are as good: the longest of them is taken, so the choice does not swing with
# the take's rate or layout on differences no one hears, and a short take keeps its length.
AS_GOOD_DB = 0.5
REFINE_S = 0.01  # the full-rate refinement's reach either side of a coarse end (s)


def _band_envelope(x: np.ndarray, hop: int) -> np.ndarray:
    """Band powers of Hann-windowed frames ``x[:, j*hop : j*hop + 2*hop]``, summed over
    channels: ``(frames, bands)``, with bands spaced about a third of an octave apart, each at
    least three bins wide (so no band is a single noisy bin), from the lowest bins to Nyquist."""
    size = 2 * hop
    window = np.hanning(size)
    spec = sum(np.abs(np.fft.rfft(sliding_window_view(ch, size)[::hop] * window, axis=1)) ** 2
               for ch in x)
    assert isinstance(spec, np.ndarray)
    bins = spec.shape[1]
    edges = [1]
    while edges[-1] < bins:
        edges.append(min(bins, max(edges[-1] + 3, int(edges[-1] * 2 ** (1 / 3)))))
    return np.add.reduceat(spec, edges[:-1], axis=1)


def _fast_len(n: int) -> int:
    """The smallest length of at least ``n`` with no prime factor above 5 (FFTs of it are
    fast). numpy's FFT, not scipy's: scipy.fft (and scipy.special with it) is a tenth of a
    second to import, scipy.signal (``fftconvolve``) four tenths, in every fresh render."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            k = p35 * (1 << max(0, (-(-n // p35) - 1).bit_length()))  # times a power of 2
            best = min(best, k)
            p35 *= 3
        p5 *= 5
    return best


def _segment_corr(head: np.ndarray, tail: np.ndarray, ends: np.ndarray, xf: int) -> np.ndarray:
    """Normalised correlation of ``head`` (``(channels, xf)``) with ``tail[:, e-xf:e]`` for
    each of the consecutive ``ends``, over all channels at once (the sum of the channels' dot
    products over the root of the product of the total energies: a mono take and the same take
    in two channels, or decorrelated into two, measure alike)."""
    region = tail[:, ends[0] - xf:ends[-1]]
    size = _fast_len(region.shape[1] + xf - 1)
    # each channel's valid correlation, summed over channels in the frequency domain
    spec = (np.fft.rfft(region, size, axis=1)
            * np.fft.rfft(head[:, ::-1], size, axis=1)).sum(axis=0)
    num = np.fft.irfft(spec, size)[xf - 1:region.shape[1]]
    c = np.concatenate([[0.0], np.cumsum((region ** 2).sum(axis=0))])
    energy = c[xf:] - c[:-xf]
    # (head * head).sum(), not np.dot: BLAS threads can stall for milliseconds on a busy machine
    return num / (np.sqrt(np.maximum(energy, 0.0) * float((head * head).sum())) + 1e-12)


def _heads_corr(heads: np.ndarray, tail: np.ndarray, ends: np.ndarray, xf: int) -> np.ndarray:
    """``_segment_corr`` for many heads at once ``(heads, channels, xf)`` ->
    ``(heads, ends)``: the tail region is transformed once."""
    region = tail[:, ends[0] - xf:ends[-1]]
    size = _fast_len(region.shape[1] + xf - 1)
    # single precision is plenty for ranking candidates
    spec = (np.fft.rfft(region.astype(np.float32), size, axis=1)[None]
            * np.fft.rfft(heads[:, :, ::-1].astype(np.float32), size, axis=2)).sum(axis=1)
    num = np.fft.irfft(spec, size, axis=1)[:, xf - 1:region.shape[1]]
    c = np.concatenate([[0.0], np.cumsum((region ** 2).sum(axis=0))])
    energy = np.maximum(c[xf:] - c[:-xf], 0.0)
    norms = np.sqrt(np.einsum("ijk,ijk->i", heads, heads))
    return num / (np.sqrt(energy)[None, :] * norms[:, None] + 1e-12)


def _points(x: np.ndarray, s: int, e: int, xf: int) -> LoopPoints:
    """Loop points with the correlation of what their crossfade overlaps, measured (every
    path measures it: the crossfade's gains are normalised by it)."""
    if xf <= 0 or e - xf < s + xf or e > x.shape[1]:
        return LoopPoints(s, e, 0.0)
    r = _segment_corr(x[:, s:s + xf], x, np.array([e]), xf)[0]
    return LoopPoints(s, e, float(np.clip(r, -1.0, 1.0)))


def _to_seam_rate(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """``x`` at ``SEAM_RATE`` (anti-aliased; exact rational ratio): every rate of a take is
    searched on the same signal, so the choice does not depend on the rate."""
    g = math.gcd(SEAM_RATE, sample_rate)
    up, down = SEAM_RATE // g, sample_rate // g
    return x if up == down else _resample_poly(x, up, down)


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, up, down, axis=1)`` (its filter: a Kaiser-windowed
    sinc of 20 zero crossings a side of the slower rate, beta 5; its alignment and length),
    for float64 ``(channels, n)``, without importing ``scipy.signal`` (0.4 s). Polyphase: the
    outputs ``r, r + up, r + 2 up ..`` share one phase of the filter and read the input at a
    stride of ``down``, so each such class is one product over a strided view."""
    from numpy.lib.stride_tricks import sliding_window_view

    half = 10 * max(up, down)
    taps = 2 * half + 1
    cutoff = 1 / max(up, down)  # of the Nyquist frequency
    m = np.arange(taps) - half
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(taps, 5.0)
    h *= up / h.sum()
    pre = down - half % down  # zeros before the filter put the outputs on its centre
    h = np.concatenate([np.zeros(pre), h])
    out_n = -(-x.shape[1] * up // down)
    skip = (half + pre) // down  # outputs of the full convolution before the first kept
    per = -(-h.size // up)  # taps per phase
    phases = np.zeros(per * up)
    phases[:h.size] = h
    # phases[k, t'] = h[k + (per - 1 - t') up]: a phase's taps in the order of its inputs
    phases = phases.reshape(per, up).T[:, ::-1]
    padded = np.concatenate([np.zeros((x.shape[0], per)), x, np.zeros((x.shape[0], per))],
                            axis=1)
    windows = sliding_window_view(padded, per, axis=1)  # (channels, frames, per)
    y = np.empty((x.shape[0], out_n))
    for r in range(min(up, out_n)):
        first = (r + skip) * down  # on the upsampled grid
        base, phase = first // up, first % up
        count = len(range(r, out_n, up))
        # output r + i up reads inputs base + i down - t, t < per (padded by per)
        view = windows[:, base + 1:base + 1 + (count - 1) * down + 1:down]
        y[:, r::up] = np.einsum("cmt,t->cm", view, phases[phase])
    return y


def max_crossfade(frames: int) -> int:
    """The longest crossfade a take of ``frames`` loops with (``arrange.MAX_CROSSFADE_SHARE``
    of it: longer, no end is left to search, and the seam is wherever the take ends)."""
    return int(frames * MAX_CROSSFADE_SHARE)


def best_loop_points(take: np.ndarray, xf: int, sample_rate: int,
                     search_s: float = 2.0) -> LoopPoints:
    """Choose the loop points of a take: an end in its last ``search_s`` and a start in its
    first ``search_s / 2`` (at most a quarter of the take) whose crossfade hides the seam best.

    What is matched: the short-time spectral envelope and level of the two crossfaded segments
    (what the ear hears of noise-like beds, where waveform correlation is near zero at any
    lag), and their waveform correlation (what a tonal drone needs to cross without a dip or
    beat), both over all channels at once. The search runs on the take resampled to
    ``SEAM_RATE`` whatever its rate, on 10 ms envelope frames (the waveform only for the few
    starts whose envelope matches best); of the seams within ``AS_GOOD_DB`` of the best, the
    longest loop is taken (it repeats least audibly), then refined at the full rate, sample by
    sample. A crossfade longer than ``max_crossfade`` is shortened to it.
    """
    n = take.shape[1]
    xf = min(xf, max_crossfade(n))
    x = take.astype(np.float64)
    if xf <= 0:
        return LoopPoints(0, n, 0.0)
    search = int(search_s * sample_rate)
    e_lo = max(2 * xf, n - search, n // 2)
    if e_lo >= n:
        return _points(x, 0, n, xf)
    s_hi = max(0, min(search // 2, n // 4, e_lo - 2 * xf))
    scale = sample_rate / SEAM_RATE  # full-rate frames per seam-rate frame
    # the head and tail regions only, with a margin for the resampler's edges: the cost does
    # not grow with the take's length
    margin = int(64 * max(scale, 1.0))
    lo = max(0, e_lo - xf - margin)
    tail = _to_seam_rate(x[:, lo:], sample_rate)
    head = _to_seam_rate(x[:, :min(n, s_hi + xf + margin)], sample_rate)
    hop = max(1, round(SEAM_HOP_S * SEAM_RATE))
    xa = max(1, round(xf / scale))
    # candidate starts (on the envelope's hop) and ends (every seam-rate frame), in the
    # seam-rate frames of ``head`` and of ``tail``
    starts = np.arange(0, round(s_hi / scale) + 1, hop)
    starts = starts[starts + xa <= head.shape[1]]
    ends = np.arange(math.ceil((e_lo - lo) / scale), math.floor((n - lo) / scale) + 1)
    ends = ends[(ends >= xa) & (ends <= tail.shape[1])]
    if starts.size == 0 or ends.size == 0:
        return _points(x, 0, n, xf)
    nframes = xa // hop - 1
    if nframes >= 1:
        head_env = _band_envelope(head[:, : starts[-1] + xa], hop)
        t0 = int(ends[0]) - xa
        tail_env = _band_envelope(tail[:, t0:int(ends[-1])], hop)
        floor = 1e-5 * max(head_env.max(initial=0.0), tail_env.max(initial=0.0)) + 1e-30

        def window_db(env: np.ndarray, firsts: np.ndarray) -> np.ndarray:
            c = np.concatenate([np.zeros((1, env.shape[1])), np.cumsum(env, axis=0)])
            firsts = np.clip(firsts, 0, env.shape[0] - nframes)
            return 10 * np.log10(np.maximum((c[firsts + nframes] - c[firsts]) / nframes, floor))

        grid = np.arange(t0 + xa, int(ends[-1]) + 1, hop)  # ends on the envelope's hop
        h_db = window_db(head_env, starts // hop)
        t_db = window_db(tail_env, (grid - xa - t0) // hop)
        coarse = np.sqrt(((h_db[:, None, :] - t_db[None, :, :]) ** 2).mean(axis=2))
        spectral = np.stack([np.interp(ends, grid, row) for row in coarse])
    else:  # crossfades shorter than two frames: waveform only
        spectral = np.zeros((starts.size, ends.size))
    # waveform correlation only for the starts whose envelope matches best (and the take's
    # own start): the envelope ranks starts, the waveform then finds the phase
    e_full = lo + ends * scale  # in full-rate frames
    s_full = starts * scale
    row_cost = spectral.min(axis=1) + _LENGTH_WEIGHT_DB * s_full / max(search, 1)
    # (np.union1d's sorted set of a few indices, without its import of numpy.ma: 8 ms)
    rows = np.array(sorted({0, *np.argsort(row_cost, kind="stable")[:_WAVE_STARTS].tolist()}),
                    dtype=np.intp)
    starts, s_full, spectral = starts[rows], s_full[rows], spectral[rows]
    r = _heads_corr(np.stack([head[:, s:s + xa] for s in starts]), tail, ends, xa)
    shorter = (n - e_full)[None, :] + s_full[:, None]
    cost = spectral + _WAVE_WEIGHT_DB * (1 - r) + _LENGTH_WEIGHT_DB * shorter / max(search, 1)

    # the seams as good as the best, longest loop first: the few longest are refined at the
    # full rate, sample by sample
    # 10 ms either side: a partial above the seam rate, which only the full rate sees, comes
    # round to nearly its phase many times within it
    reach = max(math.ceil(scale), round(REFINE_S * sample_rate))
    good = np.flatnonzero(cost.ravel() <= cost.min() + AS_GOOD_DB)
    loop_len = (e_full[None, :] - s_full[:, None]).ravel()
    order = good[np.lexsort((cost.ravel()[good], -loop_len[good]))]
    order = order[loop_len[order] >= loop_len[order[0]] - reach][:4]  # the longest's neighbours
    refined: list[tuple[float, int, int, int]] = []  # (cost, loop length, start, end)
    for flat in order:
        i, k = np.unravel_index(flat, cost.shape)
        s = min(int(round(s_full[i])), n)
        e_mid = int(round(e_full[k]))
        cand = np.arange(max(e_lo, e_mid - reach, s + 2 * xf), min(n, e_mid + reach) + 1)
        if cand.size == 0 or s + xf > n:
            continue
        rf = _segment_corr(x[:, s:s + xf], x, cand, xf)
        c = (spectral[i, k] + _WAVE_WEIGHT_DB * (1 - rf)
             + _LENGTH_WEIGHT_DB * (n - cand + s) / search)
        j = int(np.argmin(c))
        refined.append((float(c[j]), int(cand[j]) - s, s, int(cand[j])))
    if not refined:
        return _points(x, 0, n, xf)
    # the longest as good were refined; of them, the seam the full rate matches best
    _, _, s, e = min(refined)
    return _points(x, s, e, xf)


# An element's loop points already searched, by (the take's index, crossfade frames).
FoundLoops = dict[tuple[int, int], LoopPoints]
DECLICK_S = 0.005  # the crossfade a loop asked to cut hard gets where its seam would click


def seam_clicks(take: np.ndarray) -> bool:
    """Whether the take's end joined straight to its start steps further than the take ever
    does from one frame to the next (a click at every seam of a loop without a crossfade)."""
    if take.shape[1] < 2:
        return False
    jump = float(np.abs(take[:, 0].astype(np.float64) - take[:, -1]).max())
    inside = float(np.abs(np.diff(take, axis=1)).max())
    return jump > inside


class LoopSource:
    """A loop run, computed block by block: the take tiled with crossfades at seam-matched
    loop points, with the run's own fades at its ends.

    A crossfade longer than ``max_crossfade`` is shortened to it, so the seam search can run;
    ``crossfade: 0`` cuts hard where the take's ends meet, and elsewhere gets a ``DECLICK_S``
    crossfade at a matched seam rather than a click at every seam.

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
                 limit: int | None = None, points: LoopPoints | None = None,
                 found: FoundLoops | None = None) -> None:
        xf = int(round(run.crossfade_s * sample_rate))
        if xf == 0 and seam_clicks(take):
            xf = round(DECLICK_S * sample_rate)
        xf = min(xf, max_crossfade(take.shape[1]))
        # ``points``: reuse a search already made for this take and crossfade; ``found``:
        # searches made for the takes of one element (the stem, its manifest record, and
        # the next render, which keeps them with the element's conformed takes)
        key = (run.take, xf)
        pts = points or (found or {}).get(key) or best_loop_points(take, xf, sample_rate)
        if found is not None:
            found[key] = pts
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

    def periodic(self) -> tuple[int, int]:
        """Run frames ``[a, b)`` over which the run repeats itself: ``read`` gives frame
        ``t + period`` as frame ``t`` whenever both lie in it (empty when ``b <= a``).

        It starts where the first copy has played its first crossfade's worth of the loop
        (``take[start:start + xf]``, which every later copy fades in over) and ends where the
        run's fade-out begins (the last copy's missing fade-out lies past the run's end)."""
        a = max(self.loop_start + self.xf, self._fade_in.size) if self.period > 0 else 0
        return a, self.length - self._fade_out.size

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
               total: int, found: FoundLoops | None = None) -> dict[str, Any]:
    """What the manifest tells about a loop run beyond its plan: its real length and its seams.

    The mixer picks the loop point from the audio, so the seams are asked of the same
    ``LoopSource`` that renders the run. A seam is where copy k (k >= 1) fades in over the
    crossfade; ``seams_s`` holds the scene times where each crossfade starts.
    """
    start = int(round(run.start_s * sample_rate))
    src = LoopSource(take, run, sample_rate, start, max(0, total - start), found=found)
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
