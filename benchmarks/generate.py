"""Generation speed: each engine against its stock library, on the published shapes.

    uv run python benchmarks/generate.py --engine stable-audio-open-1.0 [--seconds 5]
        [--batches 1 4] [--steps 100] [--timed-steps 2] [--precisions fp32 bf16]
    uv run python benchmarks/generate.py --engine stable-audio-open-small [--seconds 5]
        [--batches 1 4] [--steps 8] [--timed-steps 2]

Stable Audio Open 1.0: diffusers' stock ``StableAudioPipeline`` asked for the take (it denoises
the whole 47.55 s window and crops) against soundscape's loop (the take's latents only), random
weights at the published shapes (T5-base's shape for the encoder); the last line is
``speedup vs stock diffusers (stable-audio-open-1.0, 5 s take, batch 1): N.NNx``. Small: the
seconds of compute per second of audio and the floor of a step (its weight bytes over the memory
bandwidth, and its FLOPs), from ``benchmarks/stable_audio_small.py``. Steps are timed on
``--timed-steps`` and scaled to ``--steps`` (the lines say so). AudioGen (the default engine):

    uv run python benchmarks/generate.py [--arch tiny|medium] [--model DIR] [--seconds 1]
                                         [--batches 1 4] [--repeats 2] [--device auto]
                                         [--precision auto] [--kl-seconds 1]

Prints, for each batch size, seconds of compute per second of audio for stock audiocraft (its
own ``generate``, float32, global RNG) and for soundscape's ``Generator`` (fast decoding loop,
per-row seeds, at ``--precision``; auto is bf16 on CPUs with AVX-512 BF16 or AMX), on the same
weights, then the mean KL divergence between float32 and reduced-precision next-token
distributions along one generation (a sanity figure, not a quality claim). Each time is the best
of ``--repeats`` runs after one warm-up run of each, the two alternating so neither profits
from going second. The last line is the batch-1 speedup.

``--arch tiny`` (default) writes a tiny checkpoint and loads it through the real loader.
``--arch medium`` builds AudioGen-medium's architecture (1.84 B LM parameters, the published
checkpoints' attention layout) with random weights in memory; on a 2-core CPU that costs minutes
and ~8 GB of memory. The weights are rounded to bfloat16-representable values once, so the one
model can be cast to bf16 for soundscape and back to float32 for stock audiocraft losslessly:
both run the very same weights, and only one copy is held.
"""

# ruff: noqa: E402 - the Stable Audio engines are dispatched before AudioGen's heavy imports
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _stable_audio(argv: list[str]) -> None:
    """``--engine stable-audio-open-1.0`` or ``stable-audio-open-small``: see the docstring."""
    sa = argparse.ArgumentParser()
    sa.add_argument("--engine", required=True)
    sa.add_argument("--seconds", type=float, default=5.0)
    sa.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    sa.add_argument("--steps", type=int, default=0, help="0: the engine's default")
    sa.add_argument("--timed-steps", type=int, default=2)
    sa.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    sa.add_argument("--no-stock", action="store_true", help="1.0: skip the stock pipeline")
    sa.add_argument("--threads", type=int, default=0)
    a = sa.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.engine == "stable-audio-open-1.0":
        from soundscape.generate.dev.bench_sao1 import benchmark_sao1

        benchmark_sao1(a.seconds, tuple(a.batches), a.steps or 100, a.timed_steps,
                       tuple(a.precisions), stock=not a.no_stock)
        return
    sys.argv = [sys.argv[0], "--seconds", str(a.seconds), "--batches",
                *map(str, a.batches), "--steps", str(a.steps or 8), "--timed-steps",
                str(a.timed_steps), "--precisions",
                *[x for x in a.precisions if x in ("fp32", "bf16", "bf16w", "int8")]]
    sys.path.insert(0, str(Path(__file__).parent))
    from stable_audio_small import main as small_main  # benchmarks/stable_audio_small.py

    small_main()


if __name__ == "__main__" and "--engine" in sys.argv:
    _engine = sys.argv[sys.argv.index("--engine") + 1]
    if _engine in ("stable-audio-open-1.0", "stable-audio-open-small"):
        _stable_audio(sys.argv[1:])
        sys.exit(0)

import torch  # AudioGen's benchmark below, unchanged

from soundscape.generate import audiogen_request
from soundscape.generate.audiogen import (
    AudioGen,
    Generator,
    cast_lm,
    lm_precision,
    per_row_sampling,
    pick_device,
)
from soundscape.generate.decode import FastDecoder
from soundscape.generate.dev.diagnostics import kl_divergence, teacher_forced_logits
from soundscape.generate.dev.tiny import build_random_model, write_tiny_model
from soundscape.generate.models import ModelRef, resolve
from soundscape.generate.precision import choose_precision

p = argparse.ArgumentParser()
p.add_argument("--engine", choices=["audiogen-medium"], default="audiogen-medium")
p.add_argument("--arch", choices=["tiny", "medium"], default="tiny")
p.add_argument("--model", help="a checkpoint directory instead of a random model")
p.add_argument("--seconds", type=float, default=1.0)
p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
p.add_argument("--repeats", type=int, default=2)
p.add_argument("--device", default="auto")
p.add_argument("--precision", default="auto")
p.add_argument("--kl-seconds", type=float, default=0.5,
               help="length of the generation the KL figure is measured along (0: skip)")
p.add_argument("--threads", type=int, default=0,
               help="torch threads for both (0: torch's default). On a machine shared with "
                    "other busy processes one thread can be several times faster than two")
p.add_argument("--layers", type=int, default=0,
               help="medium only: build this many of its 48 transformer layers (0: all). The "
                    "decoding cost is per layer, so a few layers give the ratio in less time")
args = p.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

device = pick_device(args.device)
precision = choose_precision(args.precision, device)
if args.model or args.arch == "tiny":
    model_dir = Path(args.model) if args.model else \
        write_tiny_model(Path(tempfile.mkdtemp()) / "m")
    ref = resolve(str(model_dir))
    stock = Generator(ref, device, precision="fp32").model
    label, arch = str(model_dir), "tiny" if not args.model else "model"
elif args.layers:
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from soundscape.generate.dev.tiny import tiny_configs

    lm_cfg, comp_cfg = tiny_configs(10.0, "medium")
    lm_cfg["transformer_lm"]["num_layers"] = args.layers
    lm_cfg["device"] = comp_cfg["device"] = device
    torch.manual_seed(0)
    compression = builders.get_compression_model(OmegaConf.create(comp_cfg))
    lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
    lm.cfg = OmegaConf.create(lm_cfg)
    compression.eval()
    lm.eval()
    ref = ModelRef("random/audiogen-medium-shape", None)
    stock = AudioGen(ref.name, compression, lm)
    label, arch = f"AudioGen-medium architecture, {args.layers} of 48 layers, random weights", \
        f"medium, {args.layers} of 48 layers"
else:
    compression, lm, _, _ = build_random_model("medium", max_duration_s=10.0, device=device)
    compression.eval()
    lm.eval()
    ref = ModelRef("random/audiogen-medium-shape", None)
    stock = AudioGen(ref.name, compression, lm)
    label, arch = "AudioGen-medium architecture, random weights", "medium"
with torch.no_grad():
    for t in stock.lm.parameters():  # bf16-exact, so casting there and back is lossless
        t.copy_(t.to(torch.bfloat16).float())
params = sum(t.numel() for t in stock.lm.parameters())
print(f"model: {label} ({params / 1e6:,.1f} M LM parameters), device {device}, "
      f"take {args.seconds:g} s; soundscape at {precision}, stock audiocraft at fp32; "
      f"{torch.get_num_threads()} threads")


def at(prec: str) -> None:
    if lm_precision(stock.lm) != prec:
        cast_lm(stock.lm, prec)


def sync() -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_stock(prompts: list[str]) -> float:
    at("fp32")
    stock.set_generation_params(duration=args.seconds, top_k=250, temperature=1.0,
                                cfg_coef=3.0)
    torch.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    stock.generate(prompts)
    sync()
    return time.perf_counter() - t0


def run_ours(prompts: list[str]) -> float:
    at(precision)
    gen = Generator(ref, device, max_batch=len(prompts), model=stock)
    reqs = [audiogen_request("bench", pr, args.seconds, 1.0, 250, 0.0, 3.0, 5.0, i)
            for i, pr in enumerate(prompts)]
    sync()
    t0 = time.perf_counter()
    gen.generate(reqs)
    sync()
    return time.perf_counter() - t0


def precision_kl(seconds: float) -> float:
    """Mean KL(fp32 || precision) of next-token distributions along one fp32 generation."""
    prompts = ["rain on a tin roof"]
    at("fp32")
    stock.set_generation_params(duration=seconds, top_k=250, temperature=1.0, cfg_coef=3.0)
    gen = Generator(ref, device, model=stock)
    with per_row_sampling([0], device):
        attributes, _ = stock._prepare_tokens_and_attributes(prompts, None)
        from soundscape.generate.decode import generate_tokens

        assert gen.decoder is not None
        codes = generate_tokens(stock, gen.decoder, attributes)
    ref32, valid = teacher_forced_logits(stock, FastDecoder(stock.lm), prompts, codes)
    at(precision)
    low, _ = teacher_forced_logits(stock, FastDecoder(stock.lm), prompts, codes)
    keep = valid[None].expand(codes.shape[0], -1, -1)
    return kl_divergence(ref32[keep], low[keep])


full_seconds, args.seconds = args.seconds, min(args.seconds, 0.3)  # warm-up: short takes
run_stock(["warm up"])
run_ours(["warm up"])
args.seconds = full_seconds
print(f"{'batch':>5} {'stock s/audio-s':>16} {'soundscape s/audio-s':>21} {'speedup':>8}")
speedups = {}
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
    audio = b * args.seconds
    s, o = min(t_stock), min(t_ours)
    speedups[b] = s / o
    print(f"{b:>5} {s / audio:>16.2f} {o / audio:>21.2f} {s / o:>7.2f}x", flush=True)
if args.kl_seconds > 0 and precision != "fp32":
    kl = precision_kl(args.kl_seconds)
    print(f"mean KL(fp32 || {precision}) of next-token distributions over a "
          f"{args.kl_seconds:g} s generation: {kl:.3g} nats")
if 1 in speedups:
    print(f"speedup vs stock audiocraft ({arch}, batch 1): {speedups[1]:.2f}x")
