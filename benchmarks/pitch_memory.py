"""Peak memory of a chain that cannot stream (pitch_shift), on an element and on the master.

    uv run python benchmarks/pitch_memory.py [--minutes 2 20] [--rate 48000]

For each length, a fresh child process renders one element (a mono 10 s take played back to
back over the whole timeline, ``pitch_shift`` then ``highpass``, panned to stereo) through
``mixer.element.render_element``, and another runs the master's effects pass with the same
chain over a stereo bus of that length (in memory or on disk, as a render would keep it).
Each is measured twice in this run: as soundscape runs it now (overlapping segments) and as it
ran before (the whole timeline in one call: ``segments.SEGMENT_S`` set past the timeline).
Memory is the child's peak RSS growth over what it held once set up (imports and a one-second
warm-up run done, the bus filled), so only the effects' own memory counts. The last line is the
growth from the shortest to the longest timeline with segments, against the size of the longest
element timeline: flat means far below it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHAIN = ({"pitch_shift": {"semitones": -3}}, {"highpass": {"cutoff": "80 Hz"}})


def _element(minutes: float, rate: int, whole: bool, q: Any) -> None:
    from soundscape.arrange import Clip, ElementPlan
    from soundscape.dsp import segments
    from soundscape.dsp.effects import parse_effect
    from soundscape.mixer.element import render_element

    if whole:
        segments.SEGMENT_S = 1e9
    total = int(minutes * 60 * rate)
    t = np.arange(10 * rate) / rate
    rng = np.random.default_rng(0)
    take = (0.2 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 0.05, t.size)).astype(np.float32)
    clips = tuple(Clip("bed", 0, s, 0.0, 10.0) for s in np.arange(0, minutes * 60, 10.0))
    plan = ElementPlan(name="bed", take_length_s=10.0, clips=clips,
                       effects=tuple(parse_effect(e, None) for e in CHAIN))
    frames = 0

    def sink(block: np.ndarray) -> None:
        nonlocal frames
        frames += block.shape[1]

    render_element(plan, [take[None]], rate, 2, rate, None, None)  # imports, first calls
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    render_element(plan, [take[None]], rate, 2, total, None, sink)
    elapsed = time.perf_counter() - t0
    assert frames == total
    q.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base))


def _master(minutes: float, rate: int, whole: bool, q: Any) -> None:
    from soundscape.dsp import segments
    from soundscape.dsp.bus import BLOCK, Bus
    from soundscape.dsp.effects import parse_effect
    from soundscape.master import _effects_pass

    if whole:
        segments.SEGMENT_S = 1e9
    total = int(minutes * 60 * rate)
    rng = np.random.default_rng(1)
    chain = tuple(parse_effect(e, None) for e in CHAIN)
    with Bus.temporary(2, rate) as short:  # imports, first calls
        short.add(0, rng.normal(0, 0.1, (2, rate)).astype(np.float32))
        _effects_pass(short, rate, chain)
    with tempfile.TemporaryDirectory() as tmp, Bus.temporary(2, total, Path(tmp)) as bus:
        for start in range(0, total, BLOCK):
            n = min(BLOCK, total - start)
            bus.add(start, rng.normal(0, 0.1, (2, n)).astype(np.float32))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        _effects_pass(bus, rate, chain)
        elapsed = time.perf_counter() - t0
        q.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base))


def measure(target: Any, minutes: float, rate: int, whole: bool) -> tuple[float, float]:
    """(seconds, peak RSS growth in MiB) of ``target`` in a fresh child process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(minutes, rate, whole, q))
    p.start()
    elapsed, grown_kib = q.get()
    p.join()
    return elapsed, grown_kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.0, 20.0])
    ap.add_argument("--rate", type=int, default=48000)
    args = ap.parse_args()
    growth: dict[tuple[str, bool], list[float]] = {}
    for name, target in (("element", _element), ("master", _master)):
        for minutes in args.minutes:
            for whole in (True, False):
                elapsed, mib = measure(target, minutes, args.rate, whole)
                growth.setdefault((name, whole), []).append(mib)
                how = "whole timeline (before)" if whole else "segments (now)"
                print(f"{name:7s} {minutes:5g} min {args.rate} Hz, {how:23s}: peak RSS growth "
                      f"{mib:7.1f} MiB, {minutes * 60 / elapsed:6.1f}x realtime", flush=True)
    longest = max(args.minutes)
    timeline_mib = longest * 60 * args.rate * 4 / 2**20  # the mono element timeline, float32
    for name in ("element", "master"):
        seg, old = growth[(name, False)], growth[(name, True)]
        print(f"{name}: {min(args.minutes):g} -> {longest:g} min, growth with segments "
              f"{seg[-1] - seg[0]:+.1f} MiB, whole timeline {old[-1] - old[0]:+.1f} MiB")
    worst = max(growth[(name, False)][-1] - growth[(name, False)][0]
                for name in ("element", "master"))
    print(f"segments: peak memory grows by at most {worst:.1f} MiB from {min(args.minutes):g} "
          f"to {longest:g} min, against a {timeline_mib:.0f} MiB element timeline: ratio "
          f"{worst / timeline_mib:.3f}")


if __name__ == "__main__":
    main()
