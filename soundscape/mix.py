"""Mix stage: takes + Arrangement -> stems (streamed in blocks) and the pre-master sum.

Input: each element's takes at the scene rate (float32 ``(channels, frames)``) and the
``Arrangement``. Output: per element, a stem on the full timeline (after effects, automation,
volume and pan), handed block by block to a sink (a file writer), and the running sum. Elements
are rendered one after another, so memory holds the sum plus one element, whatever their number.
Effects run on the element's continuous timeline, so reverb and delay tails ring on past the end
of the clip that started them; blocks of silence after a tail has died out are skipped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .arrange import Clip, ElementPlan, Keypoint, LoopRun
from .effects import WHOLE_TIMELINE, EffectSpec, build_board, chain_tail_s
from .errors import RenderError

if TYPE_CHECKING:
    from .meter import Meter

BLOCK = 1 << 16
SILENCE = 1e-6  # -120 dBFS


def pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power pan law: (left, right) gains; centre is -3 dB on each side."""
    theta = (pan + 1.0) * math.pi / 4.0
    return math.cos(theta), math.sin(theta)


def to_channels(audio: np.ndarray, pan: float, channels: int) -> np.ndarray:
    """Place ``(1|2, frames)`` audio in ``channels`` outputs: mono is panned with the
    constant-power law, stereo is balanced, a mono scene gets the average."""
    if channels == 1:
        return audio.mean(axis=0, keepdims=True) if audio.shape[0] > 1 else audio
    if audio.shape[0] == 1:
        gl, gr = pan_gains(pan)
        return np.concatenate([audio * np.float32(gl), audio * np.float32(gr)])
    left = np.float32(1.0 - max(pan, 0.0))
    right = np.float32(1.0 + min(pan, 0.0))
    return np.stack([audio[0] * left, audio[1] * right])


def fade_curves(fade_in: int, fade_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fade-in and fade-out curves of the given lengths (float32)."""
    def curve(k: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if k <= 0:
            return np.ones(0, dtype=np.float32)
        return fn(np.linspace(0, math.pi / 2, k, endpoint=False) + math.pi / (4 * k)) \
            .astype(np.float32)

    return curve(fade_in, np.sin), curve(fade_out, np.cos)


def apply_fades(audio: np.ndarray, fade_in: int, fade_out: int) -> np.ndarray:
    """Equal-power fades on the ends of ``audio`` (in place; only the faded frames are touched).
    Returns ``audio``."""
    n = audio.shape[1]
    fin, fout = fade_curves(min(fade_in, n), min(fade_out, n))
    if fin.size:
        audio[:, : fin.size] *= fin
    if fout.size:
        audio[:, n - fout.size:] *= fout
    return audio


DECORRELATOR_STAGES = 4
DECORRELATOR_DELAY_S = 0.006  # the stages' delays add up to this in both channels


def _allpass_delays(rng: np.random.Generator, total: int) -> np.ndarray:
    weights = rng.uniform(0.5, 1.5, DECORRELATOR_STAGES)
    delays = np.maximum(1, np.round(weights / weights.sum() * total)).astype(int)
    delays[-1] += total - delays.sum()
    return delays


@functools.lru_cache(maxsize=64)
def decorrelator_design(seed: int, sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                             tuple[np.ndarray, np.ndarray]]:
    """Delays (frames) and gains of two Schroeder all-pass cascades, (left, right).

    Both cascades are all-pass, so each channel keeps the input's magnitude at every frequency
    (flat, and R/L is 0 dB in every band). Their delays add up to the same total: an all-pass's
    energy-weighted mean delay is its total delay, so both channels' energy arrives centred on
    the same instant (no precedence pull to either side). The last right gain is solved so that
    both cascades have the same group delay at low frequencies, where sum(M (1+g)/(1-g)) rules:
    bass stays in phase between the channels (mono-compatible) while the mids and highs are
    decorrelated. Designs whose energy arrives earlier on one side (the first 10 % or half of
    it more than 0.25 ms apart) are drawn again. Deterministic per seed; the design is in
    seconds, so it sounds alike at any rate.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    total = max(2 * DECORRELATOR_STAGES, round(DECORRELATOR_DELAY_S * sample_rate))
    for _ in range(1000):
        dl, dr = _allpass_delays(rng, total), _allpass_delays(rng, total)
        gl = rng.uniform(0.4, 0.7, DECORRELATOR_STAGES) * rng.choice([-1.0, 1.0],
                                                                       DECORRELATOR_STAGES)
        gr = rng.uniform(0.4, 0.7, DECORRELATOR_STAGES) * rng.choice([-1.0, 1.0],
                                                                       DECORRELATOR_STAGES)
        rest = float(np.sum(dl * (1 + gl) / (1 - gl)) - np.sum(dr[:-1] * (1 + gr[:-1])
                                                               / (1 - gr[:-1])))
        m = float(dr[-1])
        if not (rest > 0 and 0.3 <= abs((rest - m) / (rest + m)) <= 0.75):
            continue
        gr[-1] = (rest - m) / (rest + m)
        # the energy must also arrive alike: the first 10 % and half of it within 0.25 ms
        arrivals = [_energy_arrivals(allpass_response(d, g, 30 * total))
                    for d, g in ((dl, gl), (dr, gr))]
        if np.abs(arrivals[0] - arrivals[1]).max() <= 0.00025 * sample_rate:
            return (dl, gl), (dr, gr)
    raise AssertionError("no decorrelator design found")  # never: most draws qualify


def _energy_arrivals(h: np.ndarray) -> np.ndarray:
    """Frames by which 10 % and 50 % of the response's energy have arrived."""
    cum = np.cumsum(h**2)
    return np.searchsorted(cum, np.array([0.1, 0.5]) * cum[-1]).astype(float)


def allpass_response(delays: np.ndarray, gains: np.ndarray, length: int) -> np.ndarray:
    """Impulse response (``length`` frames, float64) of a cascade of Schroeder all-passes
    ``(-g + z^-M) / (1 - g z^-M)``."""
    from scipy.signal import lfilter

    h = np.zeros(length)
    h[0] = 1.0
    for m, g in zip(delays, gains, strict=True):
        b = np.zeros(m + 1)
        a = np.zeros(m + 1)
        b[0], b[m], a[0], a[m] = -g, 1.0, 1.0, -g
        h = lfilter(b, a, h)
    return h


def decorrelate(audio: np.ndarray, seed: int, width: float, sample_rate: int = 48000) \
        -> np.ndarray:
    """Mono ``(1, frames)`` -> stereo ``(2, frames)``: each channel is the input through its
    own short all-pass cascade (``decorrelator_design``), then mid/side ``width`` scales the
    difference. Flat and centred by construction; the responses are run as FIRs truncated
    where less than 1e-9 of their energy is left."""
    from scipy.signal import oaconvolve

    (dl, gl), (dr, gr) = decorrelator_design(seed, sample_rate)
    length = int(sum(dl)) * 60
    out = []
    for d, g in ((dl, gl), (dr, gr)):
        h = allpass_response(d, g, length)
        energy = np.cumsum(h[::-1] ** 2)[::-1]  # energy from each frame on
        h = h[: max(1, int(np.count_nonzero(energy > 1e-9 * energy[0])))]
        out.append(oaconvolve(audio[0], h.astype(np.float32))[: audio.shape[1]])
    return widen(np.stack(out).astype(np.float32), width)


def widen(stereo: np.ndarray, width: float) -> np.ndarray:
    """Scale the side (L-R) of ``(2, frames)`` by ``width`` (0: mono, 1: unchanged)."""
    mid = (stereo[0] + stereo[1]) * 0.5
    side = (stereo[0] - stereo[1]) * 0.5 * np.float32(width)
    return np.stack([mid + side, mid - side]).astype(np.float32)


# ITU-R BS.775 downmix to stereo, per input layout in WAV/SMPTE channel order:
# (left gains, right gains); the LFE is dropped.
_S = math.sqrt(0.5)
DOWNMIX_TO_STEREO: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    3: ((1.0, 0.0, _S), (0.0, 1.0, _S)),  # L R C
    4: ((1.0, 0.0, _S, 0.0), (0.0, 1.0, 0.0, _S)),  # quad: L R Ls Rs
    5: ((1.0, 0.0, _S, _S, 0.0), (0.0, 1.0, _S, 0.0, _S)),  # 5.0: L R C Ls Rs
    6: ((1.0, 0.0, _S, 0.0, _S, 0.0), (0.0, 1.0, _S, 0.0, 0.0, _S)),  # 5.1: L R C LFE Ls Rs
    # 7.1: L R C LFE Lrs Rrs Lss Rss
    8: ((1.0, 0.0, _S, 0.0, _S, 0.0, _S, 0.0), (0.0, 1.0, _S, 0.0, 0.0, _S, 0.0, _S)),
}


def downmix(audio: np.ndarray, channels_out: int) -> np.ndarray:
    """Fold ``(channels, frames)`` audio down to ``channels_out`` (1 or 2) channels.

    More than two channels go to stereo with ITU-R BS.775 coefficients for the layouts in
    ``DOWNMIX_TO_STEREO`` (5.1: L + 0.707 C + 0.707 Ls, R + 0.707 C + 0.707 Rs, LFE dropped;
    WAV/SMPTE order L R C LFE Ls Rs); other counts put even channels left and odd channels
    right, averaged. Mono is the average of the stereo pair. Fewer channels than asked are
    returned as they are (panning places them). Returns float32.
    """
    if channels_out not in (1, 2):
        raise ValueError(f"channels_out must be 1 or 2, not {channels_out}")
    ch = audio.shape[0]
    if ch <= channels_out:
        return audio
    if ch > 2:
        if ch in DOWNMIX_TO_STEREO:
            m = np.array(DOWNMIX_TO_STEREO[ch], dtype=np.float32)
            audio = m @ audio.astype(np.float32, copy=False)
        else:
            audio = np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)])
    if channels_out == 1:
        audio = audio.mean(axis=0, keepdims=True)
    return audio.astype(np.float32, copy=False)


def ensure_finite(block: np.ndarray, element: str, effects: tuple[EffectSpec, ...] = (),
                  start: int = 0, sample_rate: int | None = None) -> None:
    """Raise a ``RenderError`` naming ``element`` (and the effect chain that produced the
    block, if any) when ``block`` holds NaN or inf; cheap when it does not (one sum).
    ``start``: the block's first frame on the timeline, to say where (with ``sample_rate``)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, which is the point
        total = float(block.sum())  # float32: an overflow only sends us to the exact check
    if math.isfinite(total):
        return
    bad = np.flatnonzero(~np.isfinite(block).all(axis=0))
    if bad.size == 0:
        return
    at = "" if sample_rate is None else f" from {(start + int(bad[0])) / sample_rate:.2f} s"
    if effects:
        chain = " -> ".join(fx.name for fx in effects)
        raise RenderError(f"element {element}: the effects ({chain}) produced non-finite "
                          f"samples (NaN or inf){at}; check their parameters (a filter "
                          f"frequency near or above half the scene's sample rate does this) "
                          f"and the element's volume")
    raise RenderError(f"element {element}: non-finite samples (NaN or inf){at}; the recording "
                      f"or take holds them, or the volume or automation is out of range: fix "
                      f"the file or the level")


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


def render_loop(take: np.ndarray, run: LoopRun, sample_rate: int, length: int | None) -> \
        np.ndarray:
    """A whole loop run as one array (``length`` frames, or ``times`` copies if None)."""
    if length is not None:  # run past it, then cut to exactly ``length``
        run = replace(run, end_s=run.start_s + length / sample_rate + 1.0, times=None)
    src = LoopSource(take, run, sample_rate, int(round(run.start_s * sample_rate)), length)
    return src.read(0, src.length)


class ClipSource:
    """One play of a take, gains and fades applied."""

    def __init__(self, clip: Clip, take: np.ndarray, sample_rate: int, total: int) -> None:
        self.start = int(round(clip.start_s * sample_rate))
        off = int(round(clip.offset_s * sample_rate))
        n = min(int(round(clip.length_s * sample_rate)), take.shape[1] - off, total - self.start)
        audio = take[:, off:off + max(n, 0)].astype(np.float32, copy=True)
        if clip.gain_db:
            audio *= np.float32(10 ** (clip.gain_db / 20))
        self.audio = apply_fades(audio, int(clip.fade_in_s * sample_rate),
                                 int(clip.fade_out_s * sample_rate))
        self.length, self.channels, self.pan = self.audio.shape[1], self.audio.shape[0], clip.pan

    def read(self, a: int, b: int) -> np.ndarray:
        return self.audio[:, a:b]


class PannedSource:
    """A source panned to stereo as it is read (one-shots with pans of their own)."""

    def __init__(self, inner: LoopSource | ClipSource) -> None:
        self.inner, self.start, self.length = inner, inner.start, inner.length
        self.channels, self.pan = 2, inner.pan

    def read(self, a: int, b: int) -> np.ndarray:
        return to_channels(self.inner.read(a, b), self.pan, 2)


Source = LoopSource | ClipSource | PannedSource


def element_sources(plan: ElementPlan, takes: list[np.ndarray], sample_rate: int,
                    total: int) -> list[LoopSource | ClipSource]:
    """Every loop run and clip of one element, as sources placed on the timeline."""
    srcs: list[LoopSource | ClipSource] = []
    for run in plan.loops:
        start = int(round(run.start_s * sample_rate))
        srcs.append(LoopSource(takes[run.take], run, sample_rate, start, max(0, total - start)))
    for clip in plan.clips:
        srcs.append(ClipSource(clip, takes[clip.take], sample_rate, total))
    return sorted((s for s in srcs if s.length > 0), key=lambda s: s.start)


def automation_gain(automation: tuple[Keypoint, ...], start: int, n: int,
                    sample_rate: int) -> np.ndarray | None:
    """Linear gain for frames [start, start+n) from volume keypoints (interpolated in dB)."""
    if not automation:
        return None
    times = np.array([k.time_s for k in automation])
    levels = np.array([k.level_db for k in automation])
    t = (start + np.arange(n)) / sample_rate
    return (10 ** (np.interp(t, times, levels) / 20)).astype(np.float32)


StemSink = Callable[[np.ndarray], None]


def _place(block: np.ndarray, channels: int, pan: float, volume: float,
           auto: np.ndarray | None) -> np.ndarray:
    """Pan (or balance) ``block`` into ``channels`` outputs and apply volume and automation."""
    if block.shape[0] == 1 and channels == 2:
        gl, gr = pan_gains(pan)
        out = np.empty((2, block.shape[1]), dtype=np.float32)
        g = np.float32(volume) if auto is None else auto * np.float32(volume)
        np.multiply(block[0], g * np.float32(gl), out=out[0])
        np.multiply(block[0], g * np.float32(gr), out=out[1])
        return out
    out = to_channels(block, pan, channels)
    g = np.float32(volume) if auto is None else auto * np.float32(volume)
    return np.multiply(out, g, out=out if out is not block else None)


def render_element(plan: ElementPlan, takes: list[np.ndarray], sample_rate: int, channels: int,
                   total: int, mix: np.ndarray, sink: StemSink | None = None) -> Meter:
    """Render one element's stem block by block: add it to ``mix`` in place, pass every block
    to ``sink``, and measure it. Volume, automation and effects come from ``plan``.

    Returns the finished ``Meter`` of the stem (loudness, true peak, sample peak).
    """
    from .meter import Meter

    for take in takes:  # a recording with NaN/inf is named as such, not as the effects' fault
        ensure_finite(take, plan.name)
    raw = element_sources(plan, takes, sample_rate, total)
    pans = {s.pan for s in raw}
    # Effects run on the mono take and the result is panned (cheaper), unless one-shots carry
    # pans of their own: then each is panned first and the effects run in stereo.
    srcs: list[Source] = list(raw)
    pan = next(iter(pans), 0.0)
    if channels == 2 and len(pans) > 1:
        srcs = [PannedSource(s) if s.channels == 1 else s for s in raw]
        pan = 0.0
    src_channels = max((s.channels for s in srcs), default=1)
    volume = 10 ** (plan.volume_db / 20) if plan.volume_db > -math.inf else 0.0
    effects = plan.effects
    board = build_board(effects) if effects else None
    tail = int(chain_tail_s(effects) * sample_rate) + BLOCK
    # A mono signal that is only panned and scaled is measured once, before the pan.
    mono_meter = src_channels == 1 and channels == 2 and not plan.automation
    if mono_meter:
        gl, gr = pan_gains(pan)
        meter = Meter(sample_rate, 1, gains=(gl * volume, gr * volume))
    else:
        meter = Meter(sample_rate, channels)
    quiet_since = 0  # frames of silent output so far (after a tail dies out)
    first = 0
    emitted = 0  # frames of output so far; lags the input while a plugin withholds latency
    zeros = np.zeros((channels, BLOCK), dtype=np.float32)

    def emit(chunk: np.ndarray | None, k: int) -> None:
        """Output the next ``k`` frames: ``chunk`` (effects output) or silence (None)."""
        nonlocal emitted
        k = min(k, total - emitted)
        if k <= 0:
            return
        if chunk is None:
            meter.add(zeros[: 1 if mono_meter else channels, :k])
            if sink is not None:
                sink(zeros[:, :k])
        else:
            block = chunk[:, :k]
            out = _place(block, channels, pan, volume,
                         automation_gain(plan.automation, emitted, k, sample_rate))
            ensure_finite(out, plan.name, effects, emitted, sample_rate)
            meter.add(block if mono_meter else out)
            mix[:, emitted:emitted + k] += out
            if sink is not None:
                sink(out)
        emitted += k

    if board is not None and any(fx.name in WHOLE_TIMELINE for fx in effects):
        # Some plugins do not stream (pedalboard's PitchShift drops audio when called block
        # by block): this element's timeline is processed in one call instead.
        dry = np.zeros((src_channels, total), dtype=np.float32)
        for src in srcs:
            for a in range(0, min(src.length, total - src.start), BLOCK):
                b = min(a + BLOCK, src.length, total - src.start)
                dry[:, src.start + a:src.start + b] += src.read(a, b)
        wet = board(dry, sample_rate)
        del dry
        for b0 in range(0, total, BLOCK):
            emit(wet[:, b0:b0 + BLOCK], BLOCK)
        emit(None, total - emitted)
        return meter.finish()

    for b0 in range(0, total, BLOCK):
        n = min(BLOCK, total - b0)
        dry = np.zeros((src_channels, BLOCK), dtype=np.float32)
        active = False
        while first < len(srcs) and srcs[first].start + srcs[first].length <= b0:
            first += 1
        for src in srcs[first:]:
            if src.start >= b0 + n:
                break
            s0, s1 = max(src.start, b0), min(src.start + src.length, b0 + n)
            if s1 > s0:
                # mono pieces broadcast over a stereo buffer
                dry[:, s0 - b0:s1 - b0] += src.read(s0 - src.start, s1 - src.start)
                active = True
        if board is not None and (active or quiet_since < tail or emitted < b0):
            # A plugin with latency may return fewer frames at first and catch up later:
            # whatever comes out is placed where the output has got to.
            wet = board(dry, sample_rate, reset=False)
            quiet = not active and float(np.abs(wet).max(initial=0.0)) < SILENCE
            quiet_since = quiet_since + BLOCK if quiet else 0
            emit(None if quiet else wet, wet.shape[1])
        elif board is None and active:
            emit(dry, n)
        else:
            emit(None, n)
    for _ in range(64):  # drain what latency still holds back
        if emitted >= total or board is None:
            break
        wet = board(np.zeros((src_channels, BLOCK), dtype=np.float32), sample_rate,
                    reset=False)
        emit(wet, wet.shape[1])
    emit(None, total - emitted)
    return meter.finish()
