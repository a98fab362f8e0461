"""Generator stage, a torch/diffusers importer: Stable Audio Open 1.0 takes in seeded batches.

Input: ``TakeRequest`` values of engine ``stable-audio-open-1.0``. Output: float32 stereo takes
``(2, frames)`` at 44.1 kHz. Only imported when a take must really be generated.

The model is diffusers' components of the published layout (``AutoencoderOobleck``,
``StableAudioDiTModel``, ``StableAudioProjectionModel``, T5 and its tokenizer, the
``CosineDPMSolverMultistepScheduler``), driven by this module's own denoising loop rather than
``StableAudioPipeline.__call__``, which always denoises the whole 47.55 s window and crops:

- the latent length follows the take (``ceil(frames / hop)``) and ``seconds_total`` says the
  take's length, so the model is asked for what it renders;
- the text encoder runs once per batch (prompts and negative prompts together); the conditional
  and unconditional halves of guidance share one DiT forward, and there is none when
  ``cfg_coef <= 1``;
- each row has its own ``torch.Generator`` (initial noise) and Brownian tree (the SDE sampler's
  noise), so a take is the same alone or batched with other prompts;
- the DiT runs at the chosen precision (bf16 on CPUs with native bf16, fp16 on CUDA) while the
  scheduler's state stays float32; T5 and the decoder stay float32;
- the autoencoder decodes each take in overlapping chunks, so a 47 s take never needs its whole
  activation memory at once;
- on CUDA the DiT step is compiled (``torch.compile``) once per latent length; a failure falls
  back to eager mode with a note.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeneratorError
from . import TakeRequest, batches_by_key, quiet_xformers
from .device import pick_device
from .engines import SAO_1_SAMPLERS, SAO_1_SPEC, EngineSpec
from .models import Log, ModelRef, locate
from .precision import TORCH_DTYPES, choose_precision

quiet_xformers()  # diffusers imports xformers; see generate.quiet_xformers
try:
    import torch
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
    )
    from diffusers.models.embeddings import get_1d_rotary_pos_embed
    from diffusers.pipelines.stable_audio.modeling_stable_audio import (
        StableAudioProjectionModel,
    )
    from transformers import AutoTokenizer, T5EncoderModel
except ImportError as _e:  # pragma: no cover - exercised only without diffusers installed
    raise GeneratorError(
        f"diffusers could not be imported ({_e}); Stable Audio needs it and torchsde. Install "
        f"soundscape with its dependencies ('uv sync' in the repository)") from None

ProgressFn = Callable[[str, int, int], None]
DECODE_CHUNK_LATENTS = 128  # about 6 s of audio per decoder call
DECODE_OVERLAP_LATENTS = 16  # beyond the decoder's receptive field: chunks join exactly enough


@dataclass
class Sao1Model:
    """The loaded components of Stable Audio Open 1.0."""

    tokenizer: Any
    text_encoder: Any
    projection: Any
    transformer: Any
    vae: Any
    scheduler_config: dict
    device: str
    dtype: Any  # the DiT's dtype

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def hop(self) -> int:
        return int(self.vae.hop_length)

    @property
    def max_seconds(self) -> float:
        return float(self.transformer.config.sample_size) * self.hop / self.sample_rate


def load_sao1(directory: Path, device: str, precision: str) -> Sao1Model:
    """Load the components from a folder in the published diffusers layout (no network)."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    df_logging.disable_progress_bar()
    dtype = getattr(torch, TORCH_DTYPES[precision])
    level = df_logging.get_verbosity()
    df_logging.set_verbosity_error()  # "install accelerate": a loading-speed hint, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm deprecation inside diffusers' Oobleck
        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(directory / "tokenizer",
                                                           local_files_only=True)
            text_encoder: Any = T5EncoderModel.from_pretrained(str(directory / "text_encoder"),
                                                               local_files_only=True)
            projection = StableAudioProjectionModel.from_pretrained(
                directory / "projection_model", local_files_only=True)
            transformer = StableAudioDiTModel.from_pretrained(
                directory / "transformer", local_files_only=True, torch_dtype=dtype)
            vae = AutoencoderOobleck.from_pretrained(directory / "vae", local_files_only=True)
            scheduler_config = dict(CosineDPMSolverMultistepScheduler.load_config(
                directory / "scheduler"))
        except (OSError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise GeneratorError(f"cannot load Stable Audio Open 1.0 from {directory}: "
                                 f"{first}") from None
        finally:
            df_logging.set_verbosity(level)
    batch_invariant(transformer)
    text_encoder.to(device).eval()
    projection.to(device).eval()
    transformer.to(device).eval()
    vae.to(device).eval()
    return Sao1Model(tokenizer, text_encoder, projection, transformer, vae, scheduler_config,
                     device, dtype)


def latent_length(model: Sao1Model, seconds: float) -> int:
    """Latents the DiT denoises for a take of ``seconds``: enough to decode its frames."""
    frames = int(round(seconds * model.sample_rate))
    return max(1, math.ceil(frames / model.hop))


def make_scheduler(model: Sao1Model, sampler: str) -> Any:
    if sampler not in SAO_1_SAMPLERS:
        raise GeneratorError(f"unknown sampler {sampler!r} for Stable Audio Open 1.0; use one "
                             f"of {', '.join(SAO_1_SAMPLERS)}")
    config = {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")}
    if sampler == "dpmpp-sde":
        config["solver_order"] = 1
    return CosineDPMSolverMultistepScheduler.from_config(config)


@torch.no_grad()
def encode_text(model: Sao1Model, texts: list[str]) -> tuple[Any, Any]:
    """T5 states ``[n, tokens, dim]`` (float32) of ``texts`` padded to the tokenizer's length,
    and their attention masks. Each text is encoded on its own (once per batch): T5 is a small
    share of the cost, and a batched encoder's matrix products round differently with the
    batch size, which would make a take depend on its batch-mates."""
    tok = model.tokenizer(texts, padding="max_length", max_length=model.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    ids = tok.input_ids.to(model.device)
    mask = tok.attention_mask.to(model.device)
    states = torch.cat([model.text_encoder(ids[i:i + 1], attention_mask=mask[i:i + 1])[0]
                        for i in range(len(texts))])
    return states, mask


def conditioning(model: Sao1Model, prompts: list[str], negatives: list[str | None],
                 seconds: float, guided: bool) -> tuple[Any, Any]:
    """``(cross-attention states, global states)`` for the DiT: with guidance, the
    unconditional rows first (as diffusers orders them), then the conditional ones. A row's
    unconditional half is its negative prompt with the timing, or all zeros without one (what
    the pipeline does)."""
    unique_neg = sorted({n for n in negatives if n is not None}) if guided else []
    states, mask = encode_text(model, prompts + unique_neg)
    n = len(prompts)
    pos = model.projection(text_hidden_states=states[:n]).text_hidden_states
    pos = pos * mask[:n].unsqueeze(-1).to(pos.dtype)
    # one row at a time: a linear layer over a few rows rounds differently with their count
    times = [model.projection(start_seconds=torch.zeros(1, device=model.device),
                              end_seconds=torch.full((1,), float(seconds), device=model.device))
             for _ in range(n)]
    start = torch.cat([t.seconds_start_hidden_states for t in times])
    end = torch.cat([t.seconds_end_hidden_states for t in times])
    cross = torch.cat([pos, start, end], dim=1)
    glob = torch.cat([start, end], dim=2)
    if not guided:
        return cross, glob
    rows = []
    for i, neg in enumerate(negatives):
        if neg is None:
            rows.append(torch.zeros_like(cross[i]))
            continue
        j = n + unique_neg.index(neg)
        m = mask[j:j + 1].to(torch.bool).unsqueeze(2)
        ns = torch.where(m, states[j:j + 1], 0.0)
        ne = model.projection(text_hidden_states=ns).text_hidden_states
        ne = ne * mask[j:j + 1].unsqueeze(-1).to(ne.dtype)
        rows.append(torch.cat([ne, start[i:i + 1], end[i:i + 1]], dim=1)[0])
    return torch.cat([torch.stack(rows), cross]), torch.cat([glob, glob])


def initial_noise(model: Sao1Model, seeds: list[int], length: int) -> tuple[Any, list[Any]]:
    """Each row's starting noise from its own CPU generator (as diffusers' ``randn_tensor``
    draws a list of generators), float32 on the model's device, and the generators."""
    channels = int(model.transformer.config.in_channels)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = torch.cat([torch.randn((1, channels, length), generator=g, dtype=torch.float32)
                       for g in gens])
    return noise.to(model.device), gens


class RowWise(torch.nn.Module):
    """A module applied to each batch row on its own. The DiT's global projection sees one
    token per row, and a linear layer over so few rows rounds differently with their count
    (measured: 7e-8 after one layer, 9e-5 in the take), so a take would depend on its
    batch-mates; one row at a time it does not, at no measurable cost."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Any) -> Any:
        return torch.cat([self.inner(x[i:i + 1]) for i in range(x.shape[0])])


def batch_invariant(transformer: Any) -> None:
    """Make the DiT's few-row projections row-wise (idempotent)."""
    if not isinstance(transformer.global_proj, RowWise):
        transformer.global_proj = RowWise(transformer.global_proj)


class _Dit:
    """The DiT's forward at the model's precision; compiled on CUDA once per latent length,
    falling back to eager mode if compiling fails."""

    def __init__(self, model: Sao1Model, notes: list[str]) -> None:
        self.model = model
        self.notes = notes
        self.compiled: Any = None
        if model.device == "cuda" and os.environ.get("SOUNDSCAPE_COMPILE", "1") != "0":
            try:
                self.compiled = torch.compile(model.transformer, dynamic=False)
            except Exception as e:  # an inductor or triton failure must not stop a render
                notes.append(f"torch.compile unavailable ({type(e).__name__}); eager DiT")

    def __call__(self, x: Any, t: Any, cross: Any, glob: Any, rotary: Any) -> Any:
        dtype = self.model.dtype
        args = (x.to(dtype), t.unsqueeze(0).to(x.device))
        kwargs = {"encoder_hidden_states": cross.to(dtype), "global_hidden_states": glob.to(dtype),
                  "rotary_embedding": rotary, "return_dict": False}
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)[0].float()
            except Exception as e:  # fall back once, for good, and say so
                self.notes.append(f"torch.compile failed ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:120] if str(e) else ''}); the DiT "
                                  f"runs eagerly")
                self.compiled = None
        return self.model.transformer(*args, **kwargs)[0].float()


@torch.no_grad()
def denoise(model: Sao1Model, prompts: list[str], negatives: list[str | None], seconds: float,
            seeds: list[int], steps: int, cfg_coef: float, sampler: str,
            dit: _Dit | None = None, on_step: Callable[[int, int], None] | None = None) -> Any:
    """The latents of one batch of takes of equal length and settings; ``[B, C, L]`` float32."""
    guided = cfg_coef > 1.0
    length = latent_length(model, seconds)
    cross, glob = conditioning(model, prompts, negatives, seconds, guided)
    scheduler = make_scheduler(model, sampler)
    scheduler.set_timesteps(steps, device=model.device)
    latents, gens = initial_noise(model, seeds, length)
    latents = latents * scheduler.init_noise_sigma
    head_dim = int(model.transformer.config.attention_head_dim)
    rotary = get_1d_rotary_pos_embed(head_dim // 2, length + glob.shape[1], use_real=True,
                                     repeat_interleave_real=False)
    rotary = tuple(r.to(model.device) for r in rotary)
    dit = dit or _Dit(model, [])
    total = len(scheduler.timesteps)
    if on_step is not None:
        on_step(0, total)  # conditioning and noise are done; the steps start
    with warnings.catch_warnings():
        # torchsde: "Should have tb<=t1 but got tb=500.00006": float32 rounding of the ends
        warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
        latents = _steps(scheduler, latents, gens, dit, cross, glob, rotary, guided, cfg_coef,
                         total, on_step)
    return latents


def _steps(scheduler: Any, latents: Any, gens: list[Any], dit: _Dit, cross: Any, glob: Any,
           rotary: Any, guided: bool, cfg_coef: float, total: int,
           on_step: Callable[[int, int], None] | None) -> Any:
    for i, t in enumerate(scheduler.timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        pred = dit(x, t, cross, glob, rotary)
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + cfg_coef * (cond - uncond)
        latents = scheduler.step(pred, t, latents, generator=gens).prev_sample
        if on_step is not None:
            on_step(i + 1, total)
    return latents


@torch.no_grad()
def decode(model: Sao1Model, latents: Any, frames: int, chunk: int = DECODE_CHUNK_LATENTS,
           overlap: int = DECODE_OVERLAP_LATENTS) -> np.ndarray:
    """One take's latents ``[1, C, L]`` -> float32 ``(channels, frames)``, decoded ``chunk``
    latents at a time with ``overlap`` latents of context on each side (dropped after)."""
    hop = model.hop
    length = latents.shape[-1]
    vae_dtype = next(iter(model.vae.parameters())).dtype
    parts = []
    for start in range(0, length, chunk):
        a, b = max(0, start - overlap), min(length, start + chunk + overlap)
        audio = model.vae.decode(latents[..., a:b].to(vae_dtype)).sample.float()
        keep = min(chunk, length - start)
        parts.append(audio[0, :, (start - a) * hop:(start - a + keep) * hop])
    out = torch.cat(parts, dim=-1)[:, :frames].cpu().numpy()
    if out.shape[1] < frames:
        out = np.pad(out, ((0, 0), (0, frames - out.shape[1])))
    return np.ascontiguousarray(out, dtype=np.float32)


def generate(model: Sao1Model, prompts: list[str], negatives: list[str | None], seconds: float,
             seeds: list[int], steps: int, cfg_coef: float, sampler: str = "dpmpp-2m-sde",
             dit: _Dit | None = None, on_step: Callable[[int, int], None] | None = None,
             chunk: int = DECODE_CHUNK_LATENTS) -> list[np.ndarray]:
    """Takes of ``seconds`` for ``prompts``: float32 ``(2, frames)`` at 44.1 kHz. Rows are
    decoded one by one, so no take depends on its batch-mates through the decoder."""
    latents = denoise(model, prompts, negatives, seconds, seeds, steps, cfg_coef, sampler, dit,
                      on_step)
    frames = int(round(seconds * model.sample_rate))
    return [decode(model, latents[i:i + 1], frames, chunk) for i in range(len(prompts))]


class StableAudioOpen1:
    """Stable Audio Open 1.0 behind the ``engines.Engine`` interface."""

    spec: EngineSpec = SAO_1_SPEC

    def __init__(self, ref: ModelRef, device: str = "auto", max_batch: int = 8,
                 progress: ProgressFn | None = None, log: Log | None = None,
                 precision: str = "auto", model: Sao1Model | None = None) -> None:
        self.ref = ref
        self.device = pick_device(device)
        self.precision = choose_precision(precision, self.device)
        self.model = model if model is not None else load_sao1(
            locate(ref, log=log), self.device, self.precision)
        self.max_batch = max(1, max_batch)
        self.progress = progress
        self.notes: list[str] = []
        self.dit = _Dit(self.model, self.notes)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def measure_cost(self, seconds: float = 5.0, probe_steps: int = 3) -> float:
        """Seconds of compute per second of audio at batch 1 at the engine's default settings:
        the median DiT step (after the first, which warms up) times the default step count,
        plus the decoder, over a ``seconds`` probe take."""
        stamps: list[float] = []
        defaults: dict[str, Any] = self.spec.settings
        seconds = min(seconds, self.model.max_seconds)
        t0 = time.perf_counter()
        latents = denoise(self.model, ["probe"], [None], seconds, [0], probe_steps,
                          float(defaults["cfg_coef"]), "dpmpp-2m-sde", self.dit,
                          lambda i, n: stamps.append(time.perf_counter()))
        steps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        step_s = steps[len(steps) // 2] if steps else stamps[0] - t0
        t1 = time.perf_counter()
        decode(self.model, latents, int(round(seconds * self.sample_rate)))
        decode_s = time.perf_counter() - t1
        return (step_s * int(defaults["steps"]) + decode_s) / seconds

    def plan_batches(self, requests: list[TakeRequest]) -> list[list[int]]:
        """Indices grouped by equal length and settings (the latent length and the schedule
        must match within a batch); T5 pads every prompt to one length, so prompts of any
        token count share a batch."""
        return batches_by_key(requests, self.max_batch)

    def generate(self, requests: list[TakeRequest],
                 on_batch: Callable[[list[TakeRequest], list[np.ndarray], float], None]
                 | None = None) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(requests)
        for batch in self.plan_batches(requests):
            reqs = [requests[i] for i in batch]
            t0 = time.perf_counter()
            takes = self._batch(reqs)
            for i, take in zip(batch, takes, strict=True):
                results[i] = take
            if on_batch is not None:
                on_batch(reqs, takes, time.perf_counter() - t0)
        return [r for r in results if r is not None]

    def _batch(self, reqs: list[TakeRequest]) -> list[np.ndarray]:
        r0 = reqs[0]
        s: dict[str, Any] = r0.settings
        if r0.duration_s > self.model.max_seconds + 1e-9:
            raise GeneratorError(f"a {r0.duration_s:g} s take is longer than Stable Audio Open "
                                 f"1.0's {self.model.max_seconds:.2f} s window; use a shorter "
                                 f"take and loop it")
        label = f"{len(reqs)} take(s) of {r0.duration_s:g} s"
        on_step = None
        if self.progress is not None:
            progress = self.progress

            def on_step(i: int, n: int) -> None:
                progress(label, i, n)

        return generate(self.model, [r.prompt for r in reqs],
                        [r.settings.get("negative_prompt") for r in reqs],  # type: ignore[misc]
                        r0.duration_s, [r.seed for r in reqs], int(s["steps"]),  # type: ignore
                        float(s["cfg_coef"]), str(s["sampler"]), self.dit,  # type: ignore
                        on_step)
