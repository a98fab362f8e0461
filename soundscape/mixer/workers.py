"""Stem stage: every element's stem rendered, written and measured; the pre-master sum.

Input: one ``StemJob`` per element (its plan, settings, takes at the scene rate, and where its
stem goes). Output: the pre-master mix ``(channels, frames)`` and each stem's measurements.

Long scenes are split across worker processes. The elements are dealt into groups before any
audio exists (longest estimated work first, onto the least loaded group), so which elements are
summed together depends only on the scene and the worker count: the same scene renders to the
same bits every time with the same ``jobs``. Each extra group sums into a shared-memory buffer of
its own; the main process renders group 0 itself and adds the others in group order. Memory is
one mix buffer per group plus one element at a time per group, whatever the number of elements.

A killed render leaves nothing running and nothing in memory: on Linux the workers ask the kernel
to kill them when the render that started them dies (``PR_SET_PDEATHSIG``), and the shared
buffers are named ``soundscape-<pid>-<random>`` so that a later render unlinks those whose
creator is dead.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from ..arrange import ElementPlan
from ..audio_io import AtomicAudioWriter, remove_stale_temps
from ..dsp.bus import Bus, Summing
from ..dsp.effects import chain_memory_s, chain_tail_s
from ..dsp.meter import Meter
from ..dsp.overview import OverviewAccumulator
from ..errors import RenderError
from ..notices import RenderWarning
from .element import BLOCK, may_settle, render_element
from .loops import FoundLoops, loop_seams

# Below this much work (element-seconds of audio) one process is faster than starting others:
# measured, the 60 s, 4-element rainy cafe mixes in 1.1 s alone and 1.7 s with two processes.
PARALLEL_MIN_WORK_S = 1200.0
SHM_PREFIX = "soundscape-"
_SHM_NAME = re.compile(rf"^{SHM_PREFIX}(\d+)-[0-9a-f]+$")
SHM_DIR = Path("/dev/shm")  # where Linux keeps POSIX shared memory


@dataclass(frozen=True)
class StemJob:
    plan: ElementPlan
    takes: list[np.ndarray]  # at the scene rate, in the element's stereo mode
    path: Path | None  # None: mixed but not written (``--only`` leaves the old stem)
    sample_rate: int
    duration_s: float  # the scene's
    # the stem's measurements, known already: its earlier render at another volume, scaled
    # (``Meter.scaled``); the stem is then rendered and written but not measured again
    known: Meter | None = None
    loops: FoundLoops | None = None  # loop points searched by an earlier render of the takes
    # the linear volume the stem has in the sum it is added to, where only its volume changed:
    # that earlier stem is taken out as this one is added (``render_element``'s ``replaces``)
    replaces: float | None = None

    @property
    def cost(self) -> float:
        """Estimated work, in arbitrary units (about 0.35 ms each on the machine it was
        calibrated on, benchmarks/mix.py with two processes side by side, where writing and
        summing, bound by memory, slow down more than effects do). Every stem is built,
        summed and written over the whole timeline (1.5 units a second); it is measured (in
        stereo when plays carry pans of their own) and run through its effects wherever the
        element sounds or its tail rings (the meter skips the silence between): 3 units a
        second and channel for measuring, and the effects' weights. A loop that settles
        (``steady``) is measured and run through its effects only until it does."""
        stereo = len(self.plan.pans) > 1 or any(t.shape[0] > 1 for t in self.takes)
        ch = 2.0 if stereo else 1.0
        effects = self.plan.effects
        span = 0.0
        for lp in self.plan.loops:
            take_s = self.takes[lp.take].shape[1] / self.sample_rate
            span += (lp.end_s - lp.start_s) if lp.end_s is not None else \
                (lp.times or 1) * take_s
        tail = chain_tail_s(effects)
        # a play keeps its effects running for a block past its tail (``render_element``)
        ring = tail + BLOCK / self.sample_rate
        span += sum(c.length_s + ring for c in self.plan.clips)
        span = min(span, self.duration_s)
        if self.steady:
            take_s = self.takes[self.plan.loops[0].take].shape[1] / self.sample_rate
            span = min(span, 4 * take_s + chain_memory_s(effects))
        weight = sum(_EFFECT_WEIGHT.get(fx.name, 0.5) for fx in effects)
        return 1.5 * self.duration_s + span * ch * (3.0 + weight)

    @property
    def steady(self) -> bool:
        """Whether the stem is one loop run at one level through effects that do not change
        with time: its output settles into the loop, which is then copied (``steady.py``)."""
        return may_settle(self.plan)


# effects' work for a second of one channel, in ``StemJob.cost``'s units (benchmarks/mix.py's
# chains)
_EFFECT_WEIGHT = {"reverb": 2.5, "convolution": 2.5, "delay": 0.6, "compressor": 0.7,
                  "highpass": 0.2, "lowpass": 0.2, "low_shelf": 0.2, "high_shelf": 0.2,
                  "peak": 0.2, "gain": 0.1}


@dataclass(frozen=True)
class StemMeasure:
    name: str
    loudness_lufs: float
    true_peak_dbtp: float
    sample_peak: float  # linear
    seams: tuple[dict[str, Any], ...] = ()  # ``loop_seams`` of each loop run, in plan order
    figures: dict[str, Any] | None = None  # ``Meter.figures``, to scale at a later volume
    loops: FoundLoops | None = None  # the loop points the stem was made with
    overview: dict[str, Any] | None = None  # the page's, of the blocks written to its file


def clipping_warning(measure: StemMeasure, fmt: str) -> RenderWarning | None:
    """A warning when a stem written in a fixed-point format peaks over full scale (its file
    clips; the mix, summed in float, does not)."""
    if measure.sample_peak <= 1.0:
        return None
    name = measure.name
    return RenderWarning(
        "mix", f"stem {name} peaks at +{20 * math.log10(measure.sample_peak):.1f} dBFS before "
        f"the master and is clipped in its {fmt} file (the mix is not); lower its volume or "
        f"write stems as 32-bit float wav (--bit-depth 32)", name, None, 1.0, measure.sample_peak)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_groups(jobs: list[StemJob], workers: int) -> list[list[int]]:
    """Deal job indices into ``workers`` groups: costliest first, onto the lightest group;
    each group keeps the scene's element order."""
    loads = [0.0] * workers
    groups: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(jobs)), key=lambda i: (-jobs[i].cost, i)):
        g = min(range(workers), key=lambda k: (loads[k], k))
        groups[g].append(i)
        loads[g] += jobs[i].cost
    return [sorted(g) for g in groups if g]


def choose_workers(elements: int, duration_s: float, requested: int | None) -> int:
    """Processes for ``elements`` stems: as requested, else one per core for long scenes; one
    in a daemonic process (a script's ``multiprocessing.Pool`` worker), which may not start
    processes of its own."""
    import multiprocessing as mp

    if mp.current_process().daemon:
        return 1
    if requested is not None:
        return max(1, min(requested, elements))
    if elements < 2 or duration_s * elements < PARALLEL_MIN_WORK_S or sys.platform != "linux":
        return 1
    return max(1, min(cpu_count(), elements))


def _render_group(jobs: list[StemJob], mix: Summing, sample_rate: int, channels: int,
                  bit_depth: int | None, stem_frames: int | None = None) -> list[StemMeasure]:
    measures = []
    for job in jobs:
        writer = contextlib.nullcontext() if job.path is None else AtomicAudioWriter(
            job.path, sample_rate, channels, bit_depth, background=True)
        found = dict(job.loops or {})  # the loop points the stem is made with, for its record
        total = mix.frames if stem_frames is None else stem_frames
        # the page's overview of the stem, from its blocks as they are written
        seen = OverviewAccumulator(total, channels)
        with writer as w:
            meter = render_element(job.plan, job.takes, sample_rate, channels, mix.frames, mix,
                                   None if w is None else _writing(w, seen), stem_frames,
                                   found, job.known, job.replaces)
        seams = tuple(loop_seams(job.takes[lp.take], lp, sample_rate, total, found)
                      for lp in job.plan.loops)
        measures.append(StemMeasure(job.plan.name, meter.integrated_loudness(),
                                    meter.true_peak_db, meter.sample_peak, seams,
                                    meter.figures(), found,
                                    seen.result(sample_rate) if seen.pos == total else None))
    return measures


def _writing(w: AtomicAudioWriter, seen: OverviewAccumulator) -> Callable[[np.ndarray], None]:
    """A stem's sink: each block to its file, and to its overview."""
    def sink(block: np.ndarray) -> None:
        seen.add(block)
        w.write(block)
    return sink


def _worker(jobs: list[StemJob], part: str, shape: tuple[int, int], sample_rate: int,
            bit_depth: int | None, stem_frames: int | None) -> list[StemMeasure]:
    """Render a group of stems into the parent's ``part``: a shared-memory buffer's name, or
    the path of a bus file on disk."""
    if part.startswith("/"):
        with Bus.named(*shape, Path(part), create=False, fresh=True) as bus:
            return _render_group(jobs, bus, sample_rate, shape[0], bit_depth, stem_frames)
    shm = shared_memory.SharedMemory(name=part)
    try:
        bus = Bus(*shape, array=np.ndarray(shape, dtype=np.float32, buffer=shm.buf))
        try:
            return _render_group(jobs, bus, sample_rate, shape[0], bit_depth, stem_frames)
        finally:
            bus.close()  # drops the view before the buffer is closed
    finally:
        shm.close()


def _die_with_parent(parent: int) -> None:
    """Worker initializer: be killed with the render that started us (Linux), even by kill -9,
    so that no worker outlives it writing files or holding its shared memory."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the render died before the request took effect
        os._exit(1)


def remove_stale_buffers(folder: Path = SHM_DIR) -> list[str]:
    """Unlink the shared mix buffers of renders that are no longer running; their names."""
    from ..locks import pid_alive

    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _SHM_NAME.match(entry.name)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _new_buffer(nbytes: int) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(
        name=f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(6)}", create=True, size=nbytes)


def _context() -> Any:
    """fork on Linux: instant, and it needs no ``if __name__ == "__main__"`` guard in the
    user's script. The children only run numpy, scipy and pedalboard, so torch's threads in
    the parent (after generation) do not matter, as with PyTorch's own DataLoader workers.
    Elsewhere spawn, which re-imports the main module: workers there only when asked for."""
    import multiprocessing as mp

    return mp.get_context("fork" if sys.platform == "linux" else "spawn")


# glibc hands out blocks from fresh mappings of the kernel (each page faulted in and zeroed on
# first touch) until a freed one shows that blocks that large come and go: freeing a mapped
# block of n bytes raises the size it maps from to n (up to 32 MiB) and lets the heap keep twice
# that free. The stem stage's blocks (a quarter to two megabytes: effects' and meters' outputs)
# otherwise fault in all their pages, block after block: 200,000 faults, 0.4 s of a stereo reverb
# stem's 2.2 s. One such block freed before they start lets glibc keep and reuse them.
ALLOCATOR_WARMUP = 16 << 20


def warm_allocator() -> None:
    """Let the allocator know the stem stage's blocks (see ``ALLOCATOR_WARMUP``): one 16 MiB
    block made and freed untouched. Within glibc's own adaptive rule, so a program that set
    its allocator (``mallopt``, as the command line does) is left as it set it."""
    np.empty(ALLOCATOR_WARMUP, np.uint8)  # freed at once: mapped and unmapped, never touched


def render_stems(jobs: list[StemJob], mix: Summing, sample_rate: int, bit_depth: int | None,
                 workers: int = 1, scratch: Path | None = None,
                 stem_frames: int | None = None) -> dict[str, StemMeasure]:
    """Render, write and measure every job's stem, adding each into the ``mix`` bus
    (``stem_frames``: the stems' length when the bus runs on past it, for a loopable mix).
    Several workers need a ``Bus``; one process adds into any ``Summing``.

    With several workers, each other process renders its group into a part of its own (a
    shared-memory buffer, or for a bus on disk a file in ``scratch``, by default the system
    temp folder), added into ``mix`` at the end.
    """
    warm_allocator()
    groups = plan_groups(jobs, workers) if workers > 1 and len(jobs) > 1 else [
        list(range(len(jobs)))]
    measures: list[StemMeasure] = []
    if len(groups) == 1:
        measures = _render_group(jobs, mix, sample_rate, mix.channels, bit_depth, stem_frames)
        return {m.name: m for m in measures}
    assert isinstance(mix, Bus), "stem workers sum into a Bus"
    shape = (mix.channels, mix.frames)
    remove_stale_buffers()
    buffers: list[shared_memory.SharedMemory] = []
    parts: list[Bus] = []
    names: list[str] = []
    pids: set[int] = set()  # the workers', for the sweep after a failure
    try:
        for _ in groups[1:]:
            if mix.in_memory:
                buffers.append(_new_buffer(max(1, mix.channels * mix.frames * 4)))
                view = np.ndarray(shape, dtype=np.float32, buffer=buffers[-1].buf)
                view[:] = 0.0
                parts.append(Bus(*shape, array=view))
                names.append(buffers[-1].name)
            else:
                folder = scratch or Path(tempfile.gettempdir())
                path = folder / f".sum.{os.getpid()}-{secrets.token_hex(6)}.tmp.f32"
                parts.append(Bus.named(*shape, path, create=True))
                names.append(str(path.absolute()))
        with ProcessPoolExecutor(len(groups) - 1, mp_context=_context(),
                                 initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures: list[Future[list[StemMeasure]]] = [
                pool.submit(_worker, [jobs[i] for i in g], name, shape, sample_rate, bit_depth,
                            stem_frames)
                for g, name in zip(groups[1:], names, strict=True)]
            pids.update(getattr(pool, "_processes", None) or {})
            try:
                measures = _render_group([jobs[i] for i in groups[0]], mix, sample_rate,
                                         mix.channels, bit_depth, stem_frames)
                for f in futures:
                    measures.extend(f.result())
            except BrokenProcessPool:
                raise RenderError("a stem worker process died (out of memory?); render with "
                                  "--jobs 1 to use one process") from None
            except BaseException as e:
                for f in futures:
                    f.cancel()
                if isinstance(e, KeyboardInterrupt):  # Ctrl-C, or SIGTERM to the render alone:
                    for pid in pids:  # its workers would finish their stems before the pool
                        with contextlib.suppress(OSError):  # let go; their temps are swept
                            os.kill(pid, signal.SIGKILL)
                raise
        for part in parts:
            mix.add_bus(part)
    except BaseException:
        # The pool has joined its workers by now. One that was idle when Ctrl-C came dies of
        # it, the pool then counts as broken and terminates the busy ones (SIGTERM), which
        # leaves their temporary stems behind: those of dead processes go here.
        for pid in pids:  # normally gone already; one still dying must not write on
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for folder in {j.path.parent for j in jobs if j.path is not None}:
            remove_stale_temps(folder, dead=frozenset(pids))
        raise
    finally:
        for part in parts:
            part.close()  # views dropped before their buffers are closed; files removed
        for shm in buffers:
            with contextlib.suppress(BufferError):
                shm.close()
            shm.unlink()
    by_name = {m.name: m for m in measures}
    return {j.plan.name: by_name[j.plan.name] for j in jobs}


def add_stem_file(path: Path, mix: Bus, block: int = 1 << 18) -> None:
    """Add a stem written by an earlier render into ``mix``, read block by block.

    Raises:
        RenderError: the file is unreadable or its shape is not the mix's.
    """
    from pedalboard.io import AudioFile

    try:
        with AudioFile(str(path)) as f:
            if f.num_channels != mix.channels or f.frames != mix.frames:
                raise RenderError(f"{path} is {f.num_channels} x {f.frames} frames, not "
                                  f"{mix.channels} x {mix.frames}; render with --force")
            pos = 0
            while pos < mix.frames:
                chunk = f.read(min(block, mix.frames - pos))
                if chunk.shape[1] == 0:
                    raise RenderError(f"{path} ends early; render with --force")
                mix.add(pos, chunk)
                pos += chunk.shape[1]
    except RenderError:
        raise
    except Exception as e:  # pedalboard raises several types for unreadable files
        raise RenderError(f"cannot read the kept stem {path} ({e}); render with --force") \
            from None
