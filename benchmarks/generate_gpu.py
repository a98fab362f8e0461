"""Stable Audio on a CUDA GPU: soundscape's loop against diffusers' stock pipeline, on the
published shapes with random weights (the builders benchmarks/generate.py uses on the CPU).

    python benchmarks/generate_gpu.py [--seconds 5] [--steps 100] [--engines small sao1]

Prints seconds of GPU compute per second of audio (CUDA-synchronised wall time, best of three
after a warm-up that also compiles): for Open Small at fp32 and bf16, batch 1 and 4; for Open 1.0
the stock ``StableAudioPipeline`` asked for the same take (it denoises the whole 47.55 s window),
then soundscape's loop (the take's latents only) at bf16 eager and compiled and at fp16, batch 1
and 4, with its speedup over the stock pipeline at batch 1. Run where torch sees a CUDA GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up: allocations, cuDNN/cuBLAS choices, torch.compile
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _ours(model: Any, seconds: float, batch: int, steps: int) -> Callable[[], object]:
    from soundscape.generate import stable_audio as sa

    dit = sa._Dit(model, [])  # compiles on CUDA unless SOUNDSCAPE_COMPILE=0
    prompts = [f"take {i}" for i in range(batch)]
    return lambda: sa.generate(model, prompts, [None] * batch, seconds, list(range(batch)),
                               steps, 7.0, "dpmpp-2m-sde", dit)


def sao1(seconds: float, steps: int) -> None:
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

    from soundscape.generate import stable_audio as sa
    from soundscape.generate.dev.bench_sao1 import published_sao1

    model = published_sao1()
    for m in (model.text_encoder, model.projection, model.transformer, model.vae):
        m.to("cuda")
    model.device = "cuda"
    print(f"stable-audio-open-1.0 on {torch.cuda.get_device_name()}: {seconds:g} s take = "
          f"{sa.latent_length(model, seconds)} latents (stock: the whole window), {steps} "
          f"steps, cfg 7", flush=True)
    pipe: Any = StableAudioPipeline(
        vae=model.vae, text_encoder=model.text_encoder, projection_model=model.projection,
        tokenizer=model.tokenizer, transformer=model.transformer,
        scheduler=CosineDPMSolverMultistepScheduler.from_config(model.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    for k, (name, dtype) in enumerate((("bf16", torch.bfloat16), ("fp16", torch.float16))):
        pipe.to(dtype=dtype)  # stock: every module at the precision
        stock = timed(lambda: pipe("take 0", audio_end_in_s=seconds, num_inference_steps=steps,
                                   guidance_scale=7.0, output_type="pt",
                                   generator=torch.Generator("cuda").manual_seed(0)), 2)
        base = stock / seconds
        print(f"stock diffusers  {name} batch 1             {base:8.4f} s of compute per "
              f"second of audio", flush=True)
        for m in (model.text_encoder, model.projection, model.vae):
            m.to(torch.float32)  # soundscape: the DiT at the precision, the rest in float32
        model.transformer.to(dtype)
        model.dtype = dtype
        for compiled in ("0", "1") if k == 0 else ("0",):  # compiling costs a minute a shape
            os.environ["SOUNDSCAPE_COMPILE"] = compiled
            for batch in (1, 4):
                try:
                    t = timed(_ours(model, seconds, batch, steps)) / (seconds * batch)
                except Exception as e:  # report and go on: one line per failure
                    print(f"soundscape {name} batch {batch} compile={compiled}: failed "
                          f"({type(e).__name__}: {str(e)[:200]})", flush=True)
                    continue
                print(f"soundscape       {name} batch {batch} compile={compiled}  {t:8.4f} s "
                      f"of compute per second of audio ({base / t:6.2f}x stock batch 1)",
                      flush=True)


def _small_run(model: Any, seconds: float, batch: int, precision: str) -> Callable[[], object]:
    from soundscape.generate.stable_audio_small import sample

    prompts = [f"take {i}" for i in range(batch)]
    return lambda: sample.generate_small(model, prompts, [seconds] * batch, list(range(batch)),
                                         steps=8, cfg_coef=1.0, precision=precision)


def _with_tokenizer(model: Any) -> Any:
    """The benchmark's random-weights Small with a T5 tokenizer trained offline (the published
    one is downloaded from the hub with its t5-base encoder)."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import transformers

    from soundscape.generate.dev.replica import _train_spiece

    with tempfile.TemporaryDirectory() as tmp:
        spm = Path(tmp) / "spiece.model"
        spm.write_bytes(_train_spiece(0))
        tok = getattr(transformers, "T5TokenizerFast")(  # noqa: B009 - stubs lack it
            vocab_file=str(spm), model_max_length=model.config.t5_max_length, extra_ids=100)
    return dataclasses.replace(model, tokenizer=tok)


def small(seconds: float) -> None:
    from soundscape.generate.stable_audio_small import sample
    from soundscape.generate.stable_audio_small.bench import published_model

    model = sample.to_device(_with_tokenizer(published_model()), "cuda")
    print(f"stable-audio-open-small on {torch.cuda.get_device_name()}: {seconds:g} s take, "
          f"8 steps, cfg 1", flush=True)
    for precision in ("fp32", "bf16"):
        for batch in (1, 4):
            try:
                t = timed(_small_run(model, seconds, batch, precision)) / (seconds * batch)
            except Exception as e:
                print(f"small {precision} batch {batch}: failed ({type(e).__name__}: "
                      f"{str(e)[:200]})", flush=True)
                continue
            print(f"stable-audio-open-small {precision} batch {batch}  {t:8.4f} s of compute "
                  f"per second of audio", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--engines", nargs="+", default=["small", "sao1"])
    a = ap.parse_args()
    for engine in a.engines:
        if engine == "small":
            small(a.seconds)
        else:
            sao1(a.seconds, a.steps)
