"""Mix stage: takes + Arrangement -> stems (streamed in blocks) and the pre-master sum.

Input: each element's takes at the scene rate (float32 ``(channels, frames)``) and the
``Arrangement``. Output: per element, a stem on the full timeline (after effects, automation,
volume and pan), handed block by block to a sink (a file writer), and the running sum. Elements
are rendered one after another, so memory holds the sum plus one element, whatever their number.
Effects run on the element's continuous timeline, so reverb and delay tails ring on past the end
of the clip that started them; blocks of silence after a tail has died out are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .arrange import Clip, ElementPlan, Keypoint, LoopRun
from .effects import WHOLE_TIMELINE, build_board, chain_tail_s

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


def downmix(audio: np.ndarray, channels: int) -> np.ndarray:
    """At most ``channels`` channels: more are folded into two, even channels left and odd
    right (kept as it was; ITU-R BS.775 coefficients are issue 13's work)."""
    if audio.shape[0] <= channels:
        return audio
    return np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)])


def decorrelate(audio: np.ndarray, seed: int, width: float, taps: int = 2048) -> np.ndarray:
    """Mono ``(1, frames)`` -> stereo: the right channel is an all-pass-like decorrelated copy
    (flat magnitude, random phase FIR), then mid/side width scales the difference."""
    rng = np.random.default_rng(seed)
    spectrum = np.exp(1j * rng.uniform(-np.pi, np.pi, taps // 2 + 1))
    spectrum[0] = spectrum[-1] = 1.0
    fir = np.fft.irfft(spectrum, taps) * np.hanning(taps)
    fir /= np.sqrt(np.sum(fir**2))
    from scipy.signal import fftconvolve

    right = fftconvolve(audio[0], fir, mode="full")[: audio.shape[1]].astype(np.float32)
    return widen(np.stack([audio[0], right]), width)


def widen(stereo: np.ndarray, width: float) -> np.ndarray:
    mid = (stereo[0] + stereo[1]) * 0.5
    side = (stereo[0] - stereo[1]) * 0.5 * np.float32(width)
    return np.stack([mid + side, mid - side]).astype(np.float32)


def best_loop_end(take: np.ndarray, xf: int, sample_rate: int,
                  search_s: float = 2.0) -> tuple[int, float]:
    """Choose where the take's tail crossfades into its head: the end e (in frames) in the last
    ``search_s`` whose segment ``take[e-xf:e]`` best matches ``take[:xf]`` (normalised
    cross-correlation). Returns ``(e, correlation)``."""
    n = take.shape[1]
    if xf <= 0:
        return n, 0.0
    mono = take.mean(axis=0).astype(np.float64)
    lo = max(2 * xf, n - int(search_s * sample_rate), n // 2)
    if lo >= n:
        return n, 0.0
    step = max(1, sample_rate // 4000)  # search on a decimated signal, refine is unnecessary
    head = mono[:xf:step]
    region = mono[lo - xf:n:step]
    from scipy.signal import correlate

    num = correlate(region, head, mode="valid")
    energy = np.convolve(region**2, np.ones(len(head)), mode="valid")
    denom = np.sqrt(energy * np.sum(head**2)) + 1e-12
    score = num / denom
    # among near-best matches take the latest: longer loops repeat less audibly
    k = int(np.nonzero(score >= score.max() - 0.02)[0][-1])
    e = lo + k * step
    return min(e, n), float(np.clip(score[k], -1.0, 1.0))


class LoopSource:
    """A loop run, computed block by block: the take tiled with crossfades at a seam-matched
    loop point, with the run's own fades at its ends.

    The crossfade gains a=cos, b=sin are normalised by sqrt(a^2+b^2+2ab*r), r being the
    measured correlation of the two overlapping segments, so the crossfade keeps the level
    constant for uncorrelated (equal-power) and correlated (equal-gain) material alike.
    """

    def __init__(self, take: np.ndarray, run: LoopRun, sample_rate: int, start: int,
                 limit: int | None = None) -> None:
        xf = int(round(run.crossfade_s * sample_rate))
        e, r = best_loop_end(take, xf, sample_rate)
        xf = min(xf, e // 2)
        self.period = e - xf
        if run.end_s is None:
            length = (run.times or 1) * self.period + xf
        else:
            length = int(round(run.end_s * sample_rate)) - start
        if limit is not None:
            length = min(length, limit)
        self.start, self.length, self.pan = start, max(length, 0), run.pan
        self.channels = take.shape[0]
        self.e = e
        t = np.linspace(0.0, 1.0, xf, endpoint=False) + 0.5 / max(xf, 1)
        a, b = np.cos(t * math.pi / 2), np.sin(t * math.pi / 2)
        norm = np.sqrt(a * a + b * b + 2 * a * b * max(r, 0.0))
        body = take[:, :e].astype(np.float32)
        head = body.copy()  # every copy but the first fades in over the crossfade
        head[:, :xf] *= (b / norm).astype(np.float32)
        tail = body.copy()  # every copy but the last fades out
        tail[:, e - xf:] *= (a / norm).astype(np.float32)
        both = head.copy()
        both[:, e - xf:] *= (a / norm).astype(np.float32)
        # [first][last]: the shapes of one copy of the take
        self._copies = {(True, True): body, (True, False): tail,
                        (False, True): head, (False, False): both}
        self._fade_in, self._fade_out = fade_curves(
            min(int(run.fade_in_s * sample_rate), self.length),
            min(int(run.fade_out_s * sample_rate), self.length))

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames [a, b) of the run (0 = its start)."""
        out = np.zeros((self.channels, b - a), dtype=np.float32)
        e, period, length = self.e, self.period, self.length
        if period <= 0:
            return out
        k = max(0, (a - e) // period + 1)
        while k * period < min(b, length):
            pos = k * period
            s0, s1 = max(a, pos), min(b, pos + e, length)
            if s1 > s0:
                shape = self._copies[(k == 0, pos + e >= length)]
                out[:, s0 - a:s1 - a] += shape[:, s0 - pos:s1 - pos]
            k += 1
        fin, fout = self._fade_in, self._fade_out
        if fin.size and a < fin.size:
            out[:, : min(b, fin.size) - a] *= fin[a:min(b, fin.size)]
        if fout.size and b > length - fout.size:
            f0 = max(a, length - fout.size)
            out[:, f0 - a:] *= fout[f0 - (length - fout.size):b - (length - fout.size)]
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
