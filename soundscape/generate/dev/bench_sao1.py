"""Generator stage, Stable Audio Open 1.0: timing at the published shapes (imports torch).

Input: a take length, batch sizes, a step count (and how many steps to time), precisions.
Output: printed lines: for diffusers' stock ``StableAudioPipeline`` asked for the take (it denoises
the whole 47.55 s window with guidance and crops) and for soundscape's loop (the take's latents
only), the text encoder, one DiT step, the decoder and the seconds of compute per second of audio;
bf16's error against float32 on the same seed; the last line the batch-1 speedup.

The model is Open 1.0's published architecture with random weights built in memory (DiT 24 layers
x 1536 with 12 key/value heads, Oobleck 128 channels and strides 2-4-4-8-8, T5-base's shape, the
published scheduler config): random weights cost what trained ones cost. Steps are timed on
``timed_steps`` and scaled to ``steps``, and the lines say so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..stable_audio import Sao1Model, batch_invariant, decode, denoise, latent_length

Log = Callable[[str], None]


def published_sao1(seed: int = 0) -> Sao1Model:
    """Open 1.0's published shapes with random weights, float32, on the CPU."""
    import tempfile
    from pathlib import Path

    import transformers
    from diffusers import AutoencoderOobleck, StableAudioDiTModel
    from diffusers.pipelines.stable_audio.modeling_stable_audio import (
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    from .replica import _train_spiece
    from .sa_replica import PUBLISHED_SCHEDULER, TOKEN_MAX_LENGTH

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        spm = Path(tmp) / "spiece.model"
        spm.write_bytes(_train_spiece(seed))
        tokenizer = getattr(transformers, "T5TokenizerFast")(  # noqa: B009 - stubs lack it
            vocab_file=str(spm), model_max_length=TOKEN_MAX_LENGTH, extra_ids=100)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072,
                                 num_layers=12, num_heads=12, feed_forward_proj="relu"))
    projection = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768,
                                            min_value=0, max_value=512)
    dit: Any = StableAudioDiTModel()  # diffusers' defaults are Open 1.0's published config
    vae: Any = AutoencoderOobleck()  # likewise
    for m in (t5, projection, dit, vae):
        m.eval().requires_grad_(False)
    batch_invariant(dit)
    return Sao1Model(tokenizer, t5, projection, dit, vae, dict(PUBLISHED_SCHEDULER), "cpu",
                     torch.float32)


def _ours(model: Sao1Model, seconds: float, batch: int, steps: int, timed: int,
          cfg: float = 7.0) -> dict[str, float]:
    prompts = [f"take {i}" for i in range(batch)]
    stamps: list[float] = []
    t0 = time.perf_counter()
    latents = denoise(model, prompts, [None] * batch, seconds, list(range(batch)), timed, cfg,
                      "dpmpp-2m-sde", on_step=lambda i, n: stamps.append(time.perf_counter()))
    step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    prefix = stamps[0] - t0  # tokenizer, T5, conditioning, noise (stamp 0: before step 1)
    t1 = time.perf_counter()
    frames = int(round(seconds * model.sample_rate))
    for i in range(batch):
        decode(model, latents[i:i + 1], frames)
    dec = time.perf_counter() - t1
    total = prefix + steps * step + dec
    return {"prefix_s": prefix, "step_s": step, "decode_s": dec, "total_s": total,
            "per_audio_s": total / (seconds * batch)}


def _stock(model: Sao1Model, seconds: float, steps: int, timed: int,
           cfg: float = 7.0) -> dict[str, float]:
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

    pipe: Any = StableAudioPipeline(
        vae=model.vae, text_encoder=model.text_encoder, projection_model=model.projection,
        tokenizer=model.tokenizer, transformer=model.transformer,
        scheduler=CosineDPMSolverMultistepScheduler.from_config(model.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    stamps: list[float] = []
    t0 = time.perf_counter()
    pipe("take 0", audio_end_in_s=seconds, num_inference_steps=timed, guidance_scale=cfg,
         generator=torch.Generator().manual_seed(0), output_type="pt",
         callback=lambda i, t, x: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    prefix = max(0.0, stamps[0] - t0 - step)  # the pipeline stamps after each step only
    dec = end - stamps[-1]
    total = prefix + steps * step + dec
    return {"prefix_s": prefix, "step_s": step, "decode_s": dec, "total_s": total,
            "per_audio_s": total / seconds}


def _bf16_error(model: Sao1Model, seconds: float, timed: int) -> tuple[float, float]:
    """Relative RMS error of bf16's take (and latents) against float32's, same seed."""
    frames = int(round(seconds * model.sample_rate))
    model.transformer.to(torch.float32)
    model.dtype = torch.float32
    ref = denoise(model, ["rain"], [None], seconds, [5], timed, 7.0, "dpmpp-2m-sde")
    model.transformer.to(torch.bfloat16)
    model.dtype = torch.bfloat16
    low = denoise(model, ["rain"], [None], seconds, [5], timed, 7.0, "dpmpp-2m-sde")
    a, b = decode(model, ref, frames), decode(model, low, frames)

    def rel(x: Any, y: Any) -> float:
        return float(((x - y) ** 2).mean() ** 0.5 / ((x ** 2).mean() ** 0.5 + 1e-12))

    return rel(a, b), rel(ref, low)


def benchmark_sao1(seconds: float = 5.0, batches: tuple[int, ...] = (1, 4), steps: int = 100,
                   timed_steps: int = 2, precisions: tuple[str, ...] = ("fp32", "bf16"),
                   stock: bool = True, log: Log = print) -> None:
    """Time stock diffusers and soundscape's loop; print one line each and the speedup."""
    model = published_sao1()
    timed = max(2, min(timed_steps, steps))
    scaled = f"{timed} steps timed, scaled to {steps}" if timed < steps else f"{steps} steps"
    length = latent_length(model, seconds)
    log(f"stable-audio-open-1.0, published shapes, random weights; {seconds:g} s take = "
        f"{length} latents (the stock pipeline denoises "
        f"{model.transformer.config.sample_size}); cfg 7; {scaled}; "
        f"{torch.get_num_threads()} threads")
    base = None
    if stock:
        r = _stock(model, seconds, steps, timed)
        base = r["per_audio_s"]
        log(f"stock diffusers  batch 1  fp32  T5+setup {r['prefix_s']:6.2f} s  DiT step "
            f"{r['step_s']:6.2f} s  decode+crop {r['decode_s']:6.2f} s  -> "
            f"{r['per_audio_s']:7.2f} s of compute per second of audio")
    best1: tuple[float, str] | None = None
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        model.transformer.to(dtype)
        model.dtype = dtype
        for batch in batches:
            r = _ours(model, seconds, batch, steps, timed)
            ratio = f"  ({base / r['per_audio_s']:5.2f}x stock)" if base else ""
            log(f"soundscape       batch {batch}  {precision}  T5+setup {r['prefix_s']:6.2f} s  "
                f"DiT step {r['step_s']:6.2f} s  decode {r['decode_s']:6.2f} s  -> "
                f"{r['per_audio_s']:7.2f} s of compute per second of audio{ratio}")
            if batch == 1 and (best1 is None or r["per_audio_s"] < best1[0]):
                best1 = (r["per_audio_s"], precision)
    if "bf16" in precisions:
        take_err, lat_err = _bf16_error(model, seconds, timed)
        log(f"bf16 vs fp32 (same seed, {timed} steps): relative RMS error {100 * take_err:.2f}% "
            f"of the take, {100 * lat_err:.2f}% of the latents")
    model.transformer.to(torch.float32)
    if base and best1:
        log(f"speedup vs stock diffusers (stable-audio-open-1.0, {seconds:g} s take, batch 1): "
            f"{base / best1[0]:.2f}x  [soundscape at {best1[1]}; {scaled}]")
