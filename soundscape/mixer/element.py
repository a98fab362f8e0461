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
from typing import TYPE_CHECKING

import numpy as np

from ..arrange import Clip, ElementPlan, Keypoint
from ..dsp.effects import (
    EffectSpec,
    build_board,
    chain_memory_s,
    chain_tail_s,
    split_at_whole_timeline,
    time_invariant,
)
from ..dsp.fades import fade_curves
from ..dsp.segments import segmented
from ..dsp.stereo import pan_gains, to_channels
from ..errors import RenderError
from .loops import FoundLoops, LoopSource
from .steady import SteadyLoop

if TYPE_CHECKING:
    from ..dsp.bus import Summing
    from ..dsp.meter import Meter


BLOCK = 1 << 16
SILENCE = 1e-6  # -120 dBFS


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


class ClipSource:
    """One play of a take, gains and fades applied as it is read (nothing is copied up front,
    so thousands of one-shots over hours hold only their takes)."""

    def __init__(self, clip: Clip, take: np.ndarray, sample_rate: int, total: int) -> None:
        self.start = int(round(clip.start_s * sample_rate))
        self.offset = int(round(clip.offset_s * sample_rate))
        n = min(int(round(clip.length_s * sample_rate)), take.shape[1] - self.offset,
                total - self.start)
        self.take, self.length = take, max(n, 0)
        self.gain = np.float32(10 ** (clip.gain_db / 20)) if clip.gain_db else None
        self.fade_in, self.fade_out = fade_curves(
            min(int(clip.fade_in_s * sample_rate), self.length),
            min(int(clip.fade_out_s * sample_rate), self.length))
        self.channels, self.pan = take.shape[0], clip.pan

    def read(self, a: int, b: int) -> np.ndarray:
        out = self.take[:, self.offset + a:self.offset + b].astype(np.float32, copy=True)
        if self.gain is not None:
            out *= self.gain
        fin, fout = self.fade_in, self.fade_out
        if a < fin.size:
            out[:, :min(b, fin.size) - a] *= fin[a:min(b, fin.size)]
        tail = self.length - fout.size  # where the fade-out starts
        if b > tail:
            lo = max(a, tail)
            out[:, lo - a:] *= fout[lo - tail:b - tail]
        return out


class PannedSource:
    """A source panned to stereo as it is read (one-shots with pans of their own)."""

    def __init__(self, inner: LoopSource | ClipSource) -> None:
        self.inner, self.start, self.length = inner, inner.start, inner.length
        self.channels, self.pan = 2, inner.pan

    def read(self, a: int, b: int) -> np.ndarray:
        return to_channels(self.inner.read(a, b), self.pan, 2)


Source = LoopSource | ClipSource | PannedSource


def element_sources(plan: ElementPlan, takes: list[np.ndarray], sample_rate: int,
                    total: int, found: FoundLoops | None = None) -> list[LoopSource | ClipSource]:
    """Every loop run and clip of one element, as sources placed on the timeline (``found``:
    loop points searched already, and where those searched now are kept)."""
    srcs: list[LoopSource | ClipSource] = []
    for run in plan.loops:
        start = int(round(run.start_s * sample_rate))
        srcs.append(LoopSource(takes[run.take], run, sample_rate, start, max(0, total - start),
                               found=found))
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


def dry_range(srcs: list[Source], channels: int, a: int, b: int) -> np.ndarray:
    """The sum of ``srcs`` over timeline frames ``[a, b)``, float32 ``(channels, b - a)``
    (mono sources broadcast over stereo)."""
    dry = np.zeros((channels, b - a), dtype=np.float32)
    for src in srcs:
        s0, s1 = max(src.start, a), min(src.start + src.length, b)
        if s1 > s0:
            dry[:, s0 - a:s1 - a] += src.read(s0 - src.start, s1 - src.start)
    return dry


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


def may_settle(plan: ElementPlan) -> bool:
    """Whether the element is one loop run at one level through effects that do not change
    with time (nor run in segments): its output settles into the loop (``steady_loop``)."""
    return len(plan.loops) == 1 and not plan.clips and not plan.automation \
        and time_invariant(plan.effects) and not split_at_whole_timeline(plan.effects)[0]


def steady_loop(plan: ElementPlan, srcs: list[Source], channels: int,
                sample_rate: int) -> SteadyLoop | None:
    """A watch for the point where the element's output repeats its loop (``may_settle``;
    None if not, or if its loop does not repeat for long enough to pay). The output must
    repeat for as long as the effects remember (``chain_memory_s``: their tails, their level
    detectors)."""
    if not may_settle(plan) or len(srcs) != 1 or not isinstance(srcs[0], LoopSource):
        return None
    src = srcs[0]
    a, b = src.periodic()
    start, end = src.start + a, src.start + b
    memory = int(chain_memory_s(plan.effects) * sample_rate)
    return SteadyLoop(src.period, channels, start, end, memory) \
        if SteadyLoop.possible(src.period, channels, start, end, memory) else None


def render_element(plan: ElementPlan, takes: list[np.ndarray], sample_rate: int, channels: int,
                   total: int, mix: Summing | None, sink: StemSink | None = None,
                   stem_frames: int | None = None, found: FoundLoops | None = None,
                   known: Meter | None = None, replaces: float | None = None) -> Meter:
    """Render one element's stem block by block: add it to the ``mix`` bus (None: do not
    sum), pass every block to ``sink``, and measure it. Volume, automation and effects come
    from ``plan``. ``stem_frames``: only the first this many frames go to ``sink`` and the
    meter (a loopable mix sums what rings past the end; the stem file stops there).
    ``found``: loop points searched already (by ``LoopSource``), and where the new go.
    ``known``: the stem's measurements, known already (its earlier render at another volume,
    scaled): returned as they are, and the stem is not measured. ``replaces``: the volume
    (linear) of this same stem in ``mix`` already, where only its volume changed: each block
    goes into the mix less the block at that volume, which is the earlier render's to the
    bit (the volume is applied last, to the same effects output), so an edit of one element's
    level need not read its earlier file back to take it out of the sum.

    Returns the finished ``Meter`` of the stem (loudness, true peak, sample peak).
    """
    from ..dsp.meter import REPORTED_TRUE_PEAK, Meter

    for take in takes:  # a recording with NaN/inf is named as such, not as the effects' fault
        ensure_finite(take, plan.name)
    raw = element_sources(plan, takes, sample_rate, total, found)
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
    if known is not None:
        meter = known  # nothing to measure (nor scipy.signal to import for it)
    elif mono_meter:
        gl, gr = pan_gains(pan)
        meter = Meter(sample_rate, 1, gains=(gl * volume, gr * volume),
                      interpolator=REPORTED_TRUE_PEAK)
    else:
        meter = Meter(sample_rate, channels, interpolator=REPORTED_TRUE_PEAK)
    quiet_since = 0  # frames of silent output so far (after a tail dies out)
    first = 0
    emitted = 0  # frames of output so far; lags the input while a plugin withholds latency
    zeros = np.zeros((channels, BLOCK), dtype=np.float32)
    stem_end = total if stem_frames is None else min(stem_frames, total)

    def emit(chunk: np.ndarray | None, k: int, measured: bool = True) -> None:
        """Output the next ``k`` frames: ``chunk`` (effects output) or silence (None).
        ``measured=False``: a settled loop's copies, which the meter is told of otherwise."""
        nonlocal emitted
        k = min(k, total - emitted)
        if k <= 0:
            return
        s = max(0, min(k, stem_end - emitted))  # of these, frames of the stem
        if chunk is None:
            if known is None:
                meter.add(zeros[: 1 if mono_meter else channels, :s])
            if sink is not None and s:
                sink(zeros[:, :s])
        else:
            block = chunk[:, :k]
            if measured and steady is not None:
                steady.add(emitted, block)
            auto = automation_gain(plan.automation, emitted, k, sample_rate)
            out = _place(block, channels, pan, volume, auto)
            if measured:
                ensure_finite(out, plan.name, effects, emitted, sample_rate)
            if known is None and measured:
                meter.add((block if mono_meter else out)[:, :s])
            if mix is not None:
                mix.add(emitted, out if replaces is None else
                        out - _place(block, channels, pan, replaces, auto))
            if sink is not None and s:
                sink(out[:, :s])
        emitted += k

    segment_fx, stream_fx = split_at_whole_timeline(effects)
    steady = None if segment_fx else steady_loop(plan, srcs, src_channels, sample_rate)
    if steady is not None and known is None:
        meter.retain(steady.period)
    if segment_fx:
        # Some plugins do not stream (pedalboard's PitchShift drops audio when called block
        # by block): this element's timeline goes through them in overlapping segments, and
        # through the rest of the chain block by block.
        after = build_board(stream_fx) if stream_fx else None
        for wet in segmented(build_board(segment_fx),
                             lambda a, b: dry_range(srcs, src_channels, a, b), total,
                             sample_rate, chain_tail_s(segment_fx)):
            for b0 in range(0, wet.shape[1], BLOCK):
                piece = wet[:, b0:b0 + BLOCK]
                if after is not None:
                    piece = after(piece, sample_rate, reset=False)
                emit(piece, piece.shape[1])
        for _ in range(64):  # drain what the streamed part's latency still holds back
            if emitted >= total or after is None:
                break
            piece = after(np.zeros((src_channels, BLOCK), dtype=np.float32), sample_rate,
                          reset=False)
            emit(piece, piece.shape[1])
        emit(None, total - emitted)
        return meter if known is not None else meter.finish()

    # one dry buffer, cleared after use: a fresh 64k-frame block each time costs more in
    # allocation and page faults than the mixing into it (nothing downstream keeps it)
    dry = np.zeros((src_channels, BLOCK), dtype=np.float32)
    b0 = 0
    while b0 < total:
        n = min(BLOCK, total - b0)
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
        if active:
            dry.fill(0.0)
        b0 += n
        if steady is not None and steady.settled:
            # the output repeats its loop: copy whole periods while the input still would,
            # then go on computing from as far on (the effects' state is what it was)
            periods = steady.copies(b0, emitted, stem_end)
            if periods:
                frames = periods * steady.period
                until = emitted + frames
                while emitted < until:
                    m = min(BLOCK, until - emitted)
                    emit(steady.tile(emitted, m), m, measured=False)
                if known is None:
                    meter.repeat(frames)
                b0 += frames
            steady = None
        elif steady is not None and steady.hopeless(b0):
            steady = None
    for _ in range(64):  # drain what latency still holds back
        if emitted >= total or board is None:
            break
        wet = board(np.zeros((src_channels, BLOCK), dtype=np.float32), sample_rate,
                    reset=False)
        emit(wet, wet.shape[1])
    emit(None, total - emitted)
    return meter if known is not None else meter.finish()
