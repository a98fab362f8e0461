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
from dataclasses import dataclass

import numpy as np

from .arrange import Clip, ElementPlan, LoopRun
from .effects import EffectSpec, build_board, chain_tail_s
from .scene import Element

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


def fades(n: int, fade_in: int, fade_out: int) -> np.ndarray | None:
    """Equal-power fade envelope of length n, or None when there is no fade."""
    if fade_in <= 0 and fade_out <= 0:
        return None
    env = np.ones(n, dtype=np.float32)
    if fade_in > 0:
        k = min(fade_in, n)
        env[:k] *= np.sin(np.linspace(0, math.pi / 2, k, endpoint=False) + math.pi / (4 * k))
    if fade_out > 0:
        k = min(fade_out, n)
        env[n - k:] *= np.cos(np.linspace(0, math.pi / 2, k, endpoint=False) + math.pi / (4 * k))
    return env


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


def render_loop(take: np.ndarray, run: LoopRun, sample_rate: int, length: int | None) -> \
        np.ndarray:
    """Tile ``take`` with crossfades at a seam-matched loop point.

    The crossfade gains a=cos, b=sin are normalised by sqrt(a^2+b^2+2ab*r), r being the
    measured correlation of the two overlapping segments, so the crossfade keeps the level
    constant for uncorrelated (equal-power) and correlated (equal-gain) material alike.
    """
    xf = int(round(run.crossfade_s * sample_rate))
    e, r = best_loop_end(take, xf, sample_rate)
    period = e - xf
    if length is None:
        length = (run.times or 1) * period + xf
    out = np.zeros((take.shape[0], length), dtype=np.float32)
    t = np.linspace(0.0, 1.0, xf, endpoint=False) + 0.5 / max(xf, 1)
    a, b = np.cos(t * math.pi / 2), np.sin(t * math.pi / 2)
    norm = np.sqrt(a * a + b * b + 2 * a * b * max(r, 0.0))
    fade_out = (a / norm).astype(np.float32)
    fade_in = (b / norm).astype(np.float32)
    pos = 0
    first = True
    while pos < length:
        seg = take[:, :e].copy()
        if not first and xf:
            seg[:, :xf] *= fade_in
        if pos + e < length and xf:
            seg[:, e - xf:] *= fade_out
        n = min(e, length - pos)
        out[:, pos:pos + n] += seg[:, :n]
        if pos + e >= length:
            break
        pos += period
        first = False
    return out


@dataclass
class Segment:
    start: int
    audio: np.ndarray  # (channels, frames), gains and fades applied
    pan: float = 0.0


def element_segments(plan: ElementPlan, element: Element, takes: list[np.ndarray],
                     sample_rate: int, total: int) -> list[Segment]:
    """Pre-render every clip and loop run of one element into placed segments."""
    segs: list[Segment] = []
    for run in plan.loops:
        take = takes[run.take]
        start = int(round(run.start_s * sample_rate))
        end = None if run.end_s is None else int(round(run.end_s * sample_rate))
        length = None if end is None else end - start
        audio = render_loop(take, run, sample_rate, length)
        audio = audio[:, : max(0, total - start)]
        env = fades(audio.shape[1], int(run.fade_in_s * sample_rate),
                    int(run.fade_out_s * sample_rate))
        if env is not None:
            audio *= env
        segs.append(Segment(start, audio, run.pan))
    for clip in plan.clips:
        segs.append(clip_segment(clip, takes[clip.take], sample_rate, total))
    return [s for s in segs if s.audio.shape[1] > 0]


def clip_segment(clip: Clip, take: np.ndarray, sample_rate: int, total: int) -> Segment:
    start = int(round(clip.start_s * sample_rate))
    off = int(round(clip.offset_s * sample_rate))
    n = min(int(round(clip.length_s * sample_rate)), take.shape[1] - off, total - start)
    audio = take[:, off:off + max(n, 0)].copy()
    if clip.gain_db:
        audio *= np.float32(10 ** (clip.gain_db / 20))
    env = fades(audio.shape[1], int(clip.fade_in_s * sample_rate),
                int(clip.fade_out_s * sample_rate))
    if env is not None:
        audio *= env
    return Segment(start, audio, clip.pan)


def automation_gain(element: Element, start: int, n: int, sample_rate: int) -> np.ndarray | None:
    """Linear gain for frames [start, start+n) from volume keyframes (interpolated in dB)."""
    if not element.automation:
        return None
    kf = sorted(element.automation, key=lambda k: k.time)
    times = np.array([k.time for k in kf])
    levels = np.array([max(k.level, -120.0) for k in kf])
    t = (start + np.arange(n)) / sample_rate
    return (10 ** (np.interp(t, times, levels) / 20)).astype(np.float32)


StemSink = Callable[[np.ndarray], None]


def render_element(plan: ElementPlan, element: Element, takes: list[np.ndarray],
                   sample_rate: int, channels: int, total: int, mix: np.ndarray,
                   sink: StemSink | None = None, effects: tuple[EffectSpec, ...] = ()) -> float:
    """Render one element's stem block by block, add it to ``mix`` in place, pass every block
    to ``sink``. Returns the stem's peak (linear)."""
    segs = sorted(element_segments(plan, element, takes, sample_rate, total),
                  key=lambda s: s.start)
    clip_pans = {c.pan for c in plan.clips} | {lp.pan for lp in plan.loops}
    src_channels = max((s.audio.shape[0] for s in segs), default=1)
    # Effects on mono then pan (cheaper) unless one-shots carry their own pans.
    pan_first = channels == 2 and len(clip_pans) > 1
    if pan_first:
        segs = [Segment(s.start, to_channels(s.audio, s.pan, 2), s.pan) for s in segs]
        src_channels = 2
    board = build_board(effects) if effects else None
    tail = int(chain_tail_s(effects) * sample_rate) + BLOCK
    volume = np.float32(10 ** (element.volume / 20)) if element.volume > -math.inf else 0.0
    peak = 0.0
    quiet_since = 0  # frames of silent output so far (after a tail dies out)
    first_idx = 0
    for b0 in range(0, total, BLOCK):
        n = min(BLOCK, total - b0)
        dry = np.zeros((src_channels, BLOCK), dtype=np.float32)
        active = False
        while first_idx < len(segs) and segs[first_idx].start + segs[first_idx].audio.shape[1] \
                <= b0:
            first_idx += 1
        for seg in segs[first_idx:]:
            if seg.start >= b0 + n:
                break
            s0 = max(seg.start, b0)
            s1 = min(seg.start + seg.audio.shape[1], b0 + n)
            if s1 <= s0:
                continue
            piece = seg.audio[:, s0 - seg.start:s1 - seg.start]
            dry[: piece.shape[0], s0 - b0:s1 - b0] += piece
            if piece.shape[0] == 1 and src_channels == 2:
                dry[1, s0 - b0:s1 - b0] += piece[0]
            active = True
        if board is not None:
            if active or quiet_since < tail:
                wet = board(dry, sample_rate, reset=False)
                if wet.shape[1] != BLOCK:  # latency-compensated plugins may return fewer
                    wet = np.pad(wet, ((0, 0), (0, BLOCK - wet.shape[1])))
                quiet = not active and float(np.abs(wet).max(initial=0.0)) < SILENCE
                quiet_since = quiet_since + BLOCK if quiet else 0
                block = wet[:, :n]
            else:
                block = dry[:, :n]
        else:
            block = dry[:, :n]
        if block.shape[0] == 1 and (src_channels == 1) and not pan_first:
            block = to_channels(block, next(iter(clip_pans), 0.0), channels)
        elif block.shape[0] != channels:
            block = to_channels(block, 0.0, channels)
        gain = automation_gain(element, b0, n, sample_rate)
        block = block * volume if gain is None else block * (gain * volume)
        block = block.astype(np.float32, copy=False)
        mix[:, b0:b0 + n] += block
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
        if sink is not None:
            sink(block)
    return peak
