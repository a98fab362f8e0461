"""Generation throughput: stock ``AudioGen.generate`` vs soundscape's seeded batched generator.

    uv run python benchmarks/generate.py [--arch tiny|medium] [--model DIR] [--seconds 2]
                                         [--batches 1 4 16] [--repeats 2] [--device auto]

Prints seconds of audio per second of wall time for both, on the same random-weight model with
the same seeds, and the ratio (soundscape / stock; above 1 means soundscape is faster). Each
figure is the best of ``--repeats`` runs, after one warm-up run of each, with the two run in
alternating order so neither profits from going second.

``--arch tiny`` (default) writes a tiny checkpoint and loads it through the real loader: the
CPU-sized check. ``--arch medium`` builds AudioGen-medium's architecture with random weights
in memory (1.8 B parameters; timing needs no real weights): meant for a GPU. On a 2-core CPU
that shape costs about a minute per second of audio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from soundscape.generate import TakeRequest
from soundscape.generate.audiogen import AudioGen, Generator, pick_device
from soundscape.generate.models import ModelRef, resolve
from soundscape.generate.tiny import build_random_model, write_tiny_model

p = argparse.ArgumentParser()
p.add_argument("--arch", choices=["tiny", "medium"], default="tiny")
p.add_argument("--model", help="a checkpoint directory instead of a random model")
p.add_argument("--seconds", type=float, default=2.0)
p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--device", default="auto")
args = p.parse_args()

device = pick_device(args.device)
if args.model or args.arch == "tiny":
    model_dir = Path(args.model) if args.model else \
        write_tiny_model(Path(tempfile.mkdtemp()) / "m")
    gen = Generator(resolve(str(model_dir)), device, max_batch=max(args.batches))
    label = str(model_dir)
else:
    compression, lm, _, _ = build_random_model("medium", max_duration_s=10.0, device=device)
    compression.eval()
    lm.eval()
    name = "random/audiogen-medium-shape"
    gen = Generator(ModelRef(name, None), device, max_batch=max(args.batches),
                    model=AudioGen(name, compression, lm))
    label = "AudioGen-medium architecture, random weights"
stock = gen.model
params = sum(p.numel() for p in stock.lm.parameters())
print(f"model: {label} ({params / 1e6:,.1f} M LM parameters), device {gen.device}, "
      f"take {args.seconds:g} s")


def sync() -> None:
    if gen.device == "cuda":
        torch.cuda.synchronize()


def run_stock(prompts: list[str]) -> float:
    stock.set_generation_params(duration=args.seconds, top_k=250, temperature=1.0,
                                cfg_coef=3.0)
    torch.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    stock.generate(prompts)
    sync()
    return time.perf_counter() - t0


def run_ours(prompts: list[str]) -> float:
    reqs = [TakeRequest("bench", pr, args.seconds, 1.0, 250, 0.0, 3.0, 5.0, i)
            for i, pr in enumerate(prompts)]
    sync()
    t0 = time.perf_counter()
    gen.generate(reqs)
    sync()
    return time.perf_counter() - t0


run_stock(["warm up"])
run_ours(["warm up"])
print(f"{'batch':>5} {'stock audio-s/s':>16} {'soundscape audio-s/s':>21} {'ratio':>6}")
for b in args.batches:
    prompts = [f"prompt {i:02d}" for i in range(b)]  # equal token shapes: one batch
    t_stock, t_ours = [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            t_stock.append(run_stock(prompts))
            t_ours.append(run_ours(prompts))
        else:
            t_ours.append(run_ours(prompts))
            t_stock.append(run_stock(prompts))
    a = b * args.seconds
    s, o = min(t_stock), min(t_ours)
    print(f"{b:>5} {a / s:>16.3g} {a / o:>21.3g} {s / o:>6.2f}")
