"""Stable Audio Open Small on this machine: seconds of compute per second of audio.

    uv run python benchmarks/stable_audio_small.py [--seconds 5 11] [--batches 1 4]
                                                   [--precisions fp32 bf16 bf16w int8]
                                                   [--steps 8] [--timed-steps 2]

Small's published shapes with random weights, built in memory (no download). For each take
length, batch and precision: the T5-base pass, one DiT step (best of ``--timed-steps``, scaled to
``--steps``), the chunked Oobleck decode, and the total per second of audio made; beside them the
floor of a DiT step (its weight bytes over the measured memory bandwidth) and its GFLOP. Ratios
are against fp32 measured in the same run. Then bf16's error against fp32 on one take of the same
seed (relative RMS of the take, and of the decoder alone). The last line is the batch-1 figure
of the fastest precision at the longest take, in the form issue 22 asks for, with the floor of
a DiT step and the load average beside it.
"""

from __future__ import annotations

import argparse
import os
import warnings

from soundscape.generate.stable_audio_small.bench import (
    BENCH_PRECISIONS,
    benchmark_small,
    bf16_take_error,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[5.0, 11.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--precisions", nargs="+", default=list(BENCH_PRECISIONS),
                    choices=BENCH_PRECISIONS)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--timed-steps", type=int, default=2)
    ap.add_argument("--error-seconds", type=float, default=2.0,
                    help="length of the take bf16's error is measured on (0: skip)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    best: dict[float, tuple[float, str, dict[str, float | str]]] = {}
    for seconds in args.seconds:
        for batch in args.batches:
            base = None
            for precision in args.precisions:
                r = benchmark_small(batch, seconds, args.steps, precision,
                                    timed_steps=args.timed_steps)
                per = float(r["compute_s_per_audio_s"])
                base = base or per
                print(f"{seconds:5.1f} s  batch {batch}  {precision:5s}  "
                      f"T5 {float(r['t5_s']):6.2f} s  DiT step {float(r['dit_step_s']):6.2f} s "
                      f"(floor {float(r['floor_step_s_weights']):.3f} s by bandwidth, "
                      f"{float(r['dit_step_gflop']):.0f} GFLOP, "
                      f"{float(r['dit_gflops_achieved']):.0f} GFLOP/s)  "
                      f"decode {float(r['decode_s']):6.2f} s "
                      f"({float(r['decode_gflop_per_audio_s']):.0f} GFLOP per s of audio)  "
                      f"-> {per:5.2f} s/s  ({base / per:4.2f}x fp32; CPU time "
                      f"{float(r['cpu_s_per_audio_s']):5.2f} s/s, {r['threads']} threads)",
                      flush=True)
                if batch == 1 and (seconds not in best or per < best[seconds][0]):
                    best[seconds] = (per, precision, r)
    if args.error_seconds > 0 and "bf16" in args.precisions:
        err = bf16_take_error(args.error_seconds, args.steps)
        print(f"bf16 vs fp32, same seed ({args.error_seconds:g} s take, {args.steps} steps): "
              f"{100 * err['take']:.2f}% relative RMS error of the take, "
              f"{100 * err['decoder']:.2f}% from the decoder alone", flush=True)
    longest = max(best)
    per, precision, r = best[longest]
    scaled = (f", DiT timed over {args.timed_steps} steps and scaled to {args.steps}"
              if args.timed_steps < args.steps else "")
    print(f"stable-audio-open-small: {per:.2f} s of compute per second of audio (batch 1)  "
          f"[{longest:g} s take, {precision}{scaled}; floor of a DiT step "
          f"{float(r['floor_step_s_weights']):.3f} s by bandwidth, "
          f"{float(r['dit_step_gflop']):.0f} GFLOP; load {os.getloadavg()[0]:.1f}]")


if __name__ == "__main__":
    main()
