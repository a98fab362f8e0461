"""Mixer throughput: a 12-element stereo 48 kHz scene with effects, from synthetic takes.

    uv run python benchmarks/mix.py [--minutes 10] [--elements 12]

Prints x realtime and peak memory for a naive whole-file baseline (per element: a full-length
stereo buffer, pedalboard over the whole file, numpy sum, as the tutorial composer does) and for
soundscape's streamed render with one process and with its default worker count, all measured
in this run, and the ratios. Then soundscape's peak memory at half and twice the element count,
to show that it does not grow with the number of elements.

Memory is RSS growth in a fresh child process per run. With workers it is the main process's
growth plus each worker's peak growth: an upper bound, since pages shared between them (the
mix buffers in shared memory, the inherited interpreter) are counted in each.

Each of the three is timed twice, interleaved (naive, one, default, default, one, naive), and
the faster run counts, as timeit does: on a virtual machine the host takes back memory a
process frees, and the next process pays for every page it touches again (the run right after
the naive baseline's 5.7 GiB was 1.2 s slower than the same run a minute later). Interleaved,
each case has a run that follows a light one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_scene(root: Path, minutes: float, elements: int) -> Path:
    from soundscape.audio_io import write_audio

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [f"name: bench\nduration: {minutes * 60} s\nmaster: {{loudness: -18 LUFS}}\n"
             "elements:"]
    fx = ["[{reverb: {room_size: 0.7}}]", "[{lowpass: {cutoff: 6 kHz}}, {compressor: {}}]",
          "[{delay: {time: 250 ms}}]", "[{highpass: {cutoff: 200 Hz}}]"]
    for i in range(elements):
        sr = 16000
        take = (rng.normal(0, 0.1, (1, sr * 8))).astype(np.float32)
        write_audio(root / f"t{i}.wav", take, sr, bit_depth=32)
        if i % 3 == 0:
            place = "scatter: {interval: [3 s, 9 s], pan_jitter: 0.5}"
            write_audio(root / f"t{i}.wav", take[:, : sr], sr, bit_depth=32)
        else:
            place = "loop: {crossfade: 1 s}"
        lines.append(f"  e{i}: {{file: t{i}.wav, pan: {((i % 5) - 2) / 2}, {place}, "
                     f"effects: {fx[i % 4]}}}")
    path = root / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_soundscape(scene: Path, out: Path, q: mp.Queue, jobs: int | None = None) -> None:
    from soundscape.mixer.workers import choose_workers
    from soundscape.pipelines.render import render
    from soundscape.scene import load_scene

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    render(scene, out=out, jobs=jobs)
    elapsed = time.perf_counter() - t0
    s = load_scene(scene)
    workers = choose_workers(len(s.elements), s.duration, jobs)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    if workers > 1:
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - base
        grown += (workers - 1) * max(child, 0)
    q.put((elapsed, grown))


def make_long_scene(root: Path, hours: float) -> Path:
    """Three elements over ``hours``: a crossfaded bed, a filtered drone, scattered hits."""
    from soundscape.audio_io import write_audio

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sr = 16000
    write_audio(root / "bed.wav", rng.normal(0, 0.1, (1, sr * 8)).astype(np.float32), sr,
                bit_depth=32)
    hit = (np.sin(np.arange(sr // 2) / 3.0) * np.hanning(sr // 2))[None].astype(np.float32)
    write_audio(root / "hit.wav", hit, sr, bit_depth=32)
    path = root / "long.yaml"
    path.write_text(f"""name: long
duration: {hours * 60} min
master: {{loudness: -18 LUFS}}
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 1 s}}, pan: -0.3}}
  drone: {{file: bed.wav, loop: true, pan: 0.4, volume: -6 dB,
          effects: [{{lowpass: {{cutoff: 2 kHz}}}}]}}
  hits: {{file: hit.wav, scatter: {{interval: [2 s, 6 s], pan_jitter: 0.5}}}}
""")
    return path


def run_long(scene: Path, out: Path, q: mp.Queue) -> None:
    """Render ``scene``; report the time and the absolute peak RSS of this process and of its
    largest stem worker (both in KiB)."""
    from soundscape.pipelines.render import render

    t0 = time.perf_counter()
    render(scene, out=out)
    elapsed = time.perf_counter() - t0
    q.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))


def run_naive(scene: Path, out: Path, q: mp.Queue) -> None:
    import pedalboard

    from soundscape.arrange import arrange
    from soundscape.audio_io import read_audio, resample, write_audio
    from soundscape.dsp.bus import Bus
    from soundscape.dsp.effects import build_board
    from soundscape.dsp.stereo import to_channels
    from soundscape.master import master_bus
    from soundscape.scene import load_scene

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = load_scene(scene)
    sr, total = s.sample_rate, int(s.duration * s.sample_rate)
    takes = {n: resample(*read_audio(e.file), sr) for n, e in s.elements.items()}  # type: ignore
    arr = arrange(s, {n: t.shape[1] / sr for n, t in takes.items()})
    stems = []
    for plan in arr.elements:
        e = s.elements[plan.name]
        buf = np.zeros((2, total), np.float32)
        take = to_channels(takes[plan.name], e.pan, 2)
        for lp in plan.loops:  # hard tiling, as the naive composer does
            for start in range(int(lp.start_s * sr), total, take.shape[1]):
                n = min(take.shape[1], total - start)
                buf[:, start:start + n] += take[:, :n]
        for c in plan.clips:
            start = int(c.start_s * sr)
            n = min(take.shape[1], total - start)
            buf[:, start:start + n] += take[:, :n]
        board = build_board(tuple(e.effects)) if e.effects else pedalboard.Pedalboard([])
        stem = board(buf, sr) * np.float32(10 ** (e.volume / 20))
        write_audio(out / f"{plan.name}.wav", stem, sr)
        stems.append(stem)
    mix = np.sum(stems, axis=0)
    chunks: list[np.ndarray] = []  # the whole mix in memory, mastered as one array
    with Bus(mix.shape[0], mix.shape[1], array=np.array(mix, np.float32)) as bus:
        master_bus(bus, sr, -18, -1, (), chunks.append)
    y = np.concatenate(chunks, axis=1)
    write_audio(out / "mix.wav", y, sr)
    q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base))


def measure(fn, scene: Path, out: Path, *extra) -> tuple[float, ...]:  # type: ignore[no-untyped-def]
    os.sync()  # what earlier runs wrote is on the disk: its writeback is nobody's time here
    q: mp.Queue = mp.Queue()
    proc = mp.get_context("fork").Process(target=fn, args=(scene, out, q, *extra))
    proc.start()
    result = q.get()
    proc.join()
    shutil.rmtree(out, ignore_errors=True)  # gigabytes of stems; the next run starts clean
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--elements", type=int, default=12)
    p.add_argument("--long-hours", type=float, default=3.0,
                   help="length of the long-scene case (0: skip it)")
    p.add_argument("--tmp", help="where scenes and renders go (default: the system temp "
                   "folder); a tmpfs such as /dev/shm leaves the disk out of the timing")
    args = p.parse_args()
    from soundscape.mixer.workers import cpu_count

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        audio_s = args.minutes * 60
        scene = make_scene(root / "main", args.minutes, args.elements)
        cases = {"naive": (run_naive, ()), "one": (run_soundscape, (1,)),
                 "ours": (run_soundscape, ())}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for name in [*cases, *reversed(cases)]:
            fn, extra = cases[name]
            (root / name).mkdir(exist_ok=True)
            runs[name].append(measure(fn, scene, root / name, *extra))  # type: ignore[arg-type]
        (t_naive, m_naive), (t_one, m_one), (t_ours, m_ours) = (
            (min(t for t, _ in runs[name]), max(m for _, m in runs[name])) for name in cases)
        print(f"{args.elements} elements, {args.minutes:g} min stereo 48 kHz, "
              f"{cpu_count()} CPU cores")
        print("best of two runs each: " + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t, _ in runs[name]) + " s"
            for name in cases))
        print(f"naive whole-file:           {audio_s / t_naive:7.1f}x realtime, "
              f"peak +{m_naive / 1024:.0f} MiB")
        print(f"soundscape, one process:    {audio_s / t_one:7.1f}x realtime, "
              f"peak +{m_one / 1024:.0f} MiB")
        print(f"soundscape, default jobs:   {audio_s / t_ours:7.1f}x realtime, "
              f"peak +{m_ours / 1024:.0f} MiB")
        print(f"speed ratio (soundscape / naive): {t_naive / t_ours:.2f} "
              f"(one process: {t_naive / t_one:.2f}); "
              f"memory ratio: {m_ours / max(m_naive, 1):.2f}")
        sizes = [max(2, args.elements // 2), args.elements * 2]
        peaks = {args.elements: m_one}
        for n in sizes:
            sc = make_scene(root / f"e{n}", args.minutes, n)
            peaks[n] = measure(run_soundscape, sc, root / f"o{n}", 1)[1]
        print("soundscape peak memory (one process) by element count: " + ", ".join(
            f"{n}: +{peaks[n] / 1024:.0f} MiB" for n in sorted(peaks)))
        if args.long_hours > 0:
            scene = make_long_scene(root / "long", args.long_hours)
            t_long, rss, worker = measure(run_long, scene, root / "olong")
            whole = 2 * 48000 * args.long_hours * 3600 * 4  # its mix as one float32 array
            peak = max(rss, worker)  # each process's own peak; they overlap only in part
            print(f"{args.long_hours:g}-hour scene, 3 elements, stereo 48 kHz: "
                  f"{args.long_hours * 3600 / t_long:.1f}x realtime; peak RSS {rss / 1024:.0f} "
                  f"MiB (render) and {worker / 1024:.0f} MiB (largest stem worker), against "
                  f"{whole / 2**30:.1f} GiB for its mix held as one array")
            print(f"long-scene peak memory: {(rss + worker) / 1024:.0f} MiB in all "
                  f"({peak / 1024:.0f} MiB in one process); memory ratio against one mix "
                  f"array: {(rss + worker) * 1024 / whole:.3f}")
