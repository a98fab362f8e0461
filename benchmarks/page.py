"""Audition page cost: stem overviews streamed from disk against reading whole files.

    uv run python benchmarks/page.py [--minutes 10] [--render renders/rainy_cafe]

Writes a long stereo 48 kHz 24-bit stem of noise, then measures, each in a fresh child process,
the time and peak memory growth (RSS) of ``soundscape.outputs.page.overview`` (read block by
block) and
of a naive baseline that reads the whole file and bins it with numpy, and prints the ratios.
Then the overview's memory for a file twice as long, to show that it does not grow with the
length. With ``--render DIR`` (a finished render folder) it also times ``write_page`` there and
prints the page's size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def make_stem(path: Path, minutes: float) -> Path:
    from soundscape.audio_io import AtomicAudioWriter

    sr = 48000
    rng = np.random.default_rng(0)
    with AtomicAudioWriter(path, sr, 2, 24) as w:
        for _ in range(int(minutes * 60)):
            w.write(rng.normal(0, 0.1, (2, sr)).astype(np.float32))
    return path


def streamed(path: Path, q: mp.Queue) -> None:
    from soundscape.outputs.page import overview

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ov = overview(path)
    q.put((time.perf_counter() - t0,
           (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, ov["bins"]))


def whole_file(path: Path, q: mp.Queue) -> None:
    from soundscape.audio_io import read_audio

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    audio, _ = read_audio(path)
    bins = np.array_split(np.abs(audio).max(axis=0), 2000)
    peaks = [float(b.max()) for b in bins]
    q.put((time.perf_counter() - t0,
           (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, len(peaks)))


def measure(fn, path: Path) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=fn, args=(path, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"{fn.__name__} failed in its child process (exit {p.exitcode})")
    return q.get()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--render", type=Path, help="a finished render folder to write a page for")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = make_stem(Path(tmp) / "one.wav", args.minutes)
        two = make_stem(Path(tmp) / "two.wav", 2 * args.minutes)
        mb = one.stat().st_size / 2**20
        print(f"stem: {args.minutes:g} min, stereo 48 kHz 24-bit, {mb:.0f} MiB")
        t_s, m_s, n = measure(streamed, one)
        t_w, m_w, _ = measure(whole_file, one)
        _, m_2, _ = measure(streamed, two)
        print(f"baseline (whole file read, numpy bins): {t_w:6.2f} s  {m_w:7.1f} MiB")
        print(f"overview (streamed, {n} bins):         {t_s:6.2f} s  {m_s:7.1f} MiB")
        print(f"overview at {2 * args.minutes:g} min:                       {m_2:7.1f} MiB")
    if args.render is not None:
        from soundscape.outputs.page import write_page

        t0 = time.perf_counter()
        page = write_page(args.render)
        t = time.perf_counter() - t0
        print(f"write_page {args.render}: {t:.2f} s, {page.stat().st_size / 1024:.0f} KiB")
    print(f"ratios: time {t_s / t_w:.2f}x baseline, memory {m_s / max(m_w, 1e-9):.3f}x "
          f"baseline, memory at twice the length {m_2 / max(m_s, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
