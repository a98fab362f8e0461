"""Generation throughput: stock ``AudioGen.generate`` vs soundscape's seeded batched generator.

    uv run python benchmarks/generate.py [--model DIR] [--seconds 2] [--batches 1 4 16]

Prints seconds of audio per second of wall time for both, on the same random-weight model and
seeds, and the ratio (soundscape / stock). Without --model a tiny checkpoint is written to a
temporary folder (CPU-sized); point --model at an AudioGen-medium-sized checkpoint on a GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from soundscape.generate import TakeRequest
from soundscape.generate.audiogen import Generator
from soundscape.generate.models import resolve
from soundscape.generate.tiny import write_tiny_model

p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--seconds", type=float, default=2.0)
p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
p.add_argument("--device", default="auto")
args = p.parse_args()
model_dir = Path(args.model) if args.model else write_tiny_model(Path(tempfile.mkdtemp()) / "m")
gen = Generator(resolve(str(model_dir)), args.device, max_batch=max(args.batches))
stock = gen.model
print(f"model {model_dir}, device {gen.device}, take {args.seconds:g} s")
print(f"{'batch':>5} {'stock audio-s/s':>16} {'soundscape audio-s/s':>21} {'ratio':>6}")
for b in args.batches:
    prompts = [f"prompt {i}" for i in range(b)]
    stock.set_generation_params(duration=args.seconds, top_k=250)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    stock.generate(prompts)
    t_stock = time.perf_counter() - t0
    reqs = [TakeRequest("bench", pr, args.seconds, 1.0, 250, 0.0, 3.0, 5.0, i)
            for i, pr in enumerate(prompts)]
    t0 = time.perf_counter()
    gen.generate(reqs)
    t_ours = time.perf_counter() - t0
    a = b * args.seconds
    print(f"{b:>5} {a / t_stock:>16.2f} {a / t_ours:>21.2f} {t_stock / t_ours:>6.2f}")
