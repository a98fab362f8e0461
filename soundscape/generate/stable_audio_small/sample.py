"""Generator stage, Stable Audio Open Small: prompts -> stereo takes (imports torch).

Input: a loaded ``SmallModel``, prompts, durations in seconds and seeds. Output: float32 arrays
``(2, round(duration * 44100))``. Each take denoises only its own length: its latent length is
the duration rounded up to whole latents (the DiT takes any length, the decoder makes exactly
``downsampling_ratio`` frames per latent), ``seconds_total`` says that duration, and the audio is
cropped to the exact frame count. Takes of equal latent length share the DiT's batch; each row
draws its noise from its own ``torch.Generator``. The sampler is stable-audio-tools' ping-pong
sampler for rectified flow with its schedule (``sample_rf``: logSNR from -6 to 2).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ...errors import GeneratorError
from .model import SmallDiT, SmallModel

PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: CUDA only
DECODE_CHUNK_LATENTS = 128  # about 6 s of audio per decoder call (about 1 GB of activations)
DECODE_OVERLAP_LATENTS = 12  # each side; the decoder reaches about 10 latents


def schedule(steps: int) -> torch.Tensor:
    """Noise levels ``t`` (steps + 1 values, 1 -> 0): stable-audio-tools' ``sample_rf`` with
    sigma_max 1, logSNR evenly from -6 to 2."""
    t = torch.sigmoid(-torch.linspace(-6.0, 2.0, steps + 1))
    t[0], t[-1] = 1.0, 0.0
    return t


def latent_length(model: SmallModel, frames: int) -> int:
    """Latents needed for ``frames`` of audio (the decoder makes ``downsampling_ratio`` each)."""
    return max(1, -(-frames // model.config.downsampling_ratio))


def device_of(model: SmallModel) -> torch.device:
    return next(model.dit.parameters()).device


def to_device(model: SmallModel, device: str) -> SmallModel:
    """Move every module to ``device`` (``cpu``, ``cuda``); seeds stay device-independent
    because the noise is always drawn on the CPU."""
    for m in (model.dit, model.seconds, model.prompt_proj, model.decoder, model.text_encoder):
        m.to(device)
    model.derived.clear()  # copies built for the old device
    return model


@contextlib.contextmanager
def _autocast(precision: str, device: torch.device | None = None) -> Iterator[None]:
    kind = "cpu" if device is None else device.type
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(kind, dtype=dtype):
            yield
    else:
        yield


@torch.no_grad()
def encode_text(model: SmallModel, prompts: Sequence[str], precision: str = "fp32"
                ) -> torch.Tensor:
    """T5 states ``(B, max_length, cond_dim)``, zero where the prompt is padding, as
    stable-audio-tools' T5Conditioner returns them (every prompt padded to ``max_length``, so a
    row's states do not depend on the other prompts of the batch). At bf16 on a CPU, T5 runs
    under bf16 autocast (measured here: 0.25 s of CPU instead of 0.72 s per prompt)."""
    enc = model.tokenizer(list(prompts), truncation=True, max_length=model.config.t5_max_length,
                          padding="max_length", return_tensors="pt")
    dev = device_of(model)
    mask = enc["attention_mask"].bool().to(dev)
    with _autocast("bf16" if precision == "bf16" and dev.type == "cpu" else "fp32", dev):
        states = model.text_encoder(input_ids=enc["input_ids"].to(dev), attention_mask=mask
                                    ).last_hidden_state.float()
    states = model.prompt_proj(states)
    return states * mask[..., None].float()


@torch.no_grad()
def conditioning(model: SmallModel, text_states: torch.Tensor, seconds_total: Sequence[float]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention tokens ``(B, S, cond_dim)`` and global conditioning ``(B, cond_dim)``."""
    cfg = model.config
    secs = torch.tensor([float(s) for s in seconds_total]).clamp(cfg.seconds_min,
                                                                 cfg.seconds_max)
    secs = secs.to(device_of(model))
    secs_emb = model.seconds((secs - cfg.seconds_min) / (cfg.seconds_max - cfg.seconds_min))
    by_id = {"prompt": text_states, "seconds_total": secs_emb[:, None, :]}
    cross = torch.cat([by_id[i] for i in cfg.cross_attn_ids], dim=1)
    glob = secs_emb if "seconds_total" in cfg.global_ids else torch.zeros_like(secs_emb)
    return cross, glob


def cpu_bf16_dit(model: SmallModel) -> SmallDiT:
    """A copy of the DiT whose Linear layers hold bf16 weights, built once per model.

    Under CPU autocast it computes exactly what the fp32 DiT computes under autocast (autocast
    rounds each weight to bf16 the same way, and leaves a bf16 one as it is) without casting
    the 1.3 GB of fp32 weights at every step: measured here, a step at 5 s in 0.43 s of CPU
    instead of 0.77 s. LayerNorms and the residual stream stay fp32, as under autocast.
    """
    if "cpu_bf16_dit" not in model.derived:
        dit = copy.deepcopy(model.dit)
        for m in dit.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(torch.bfloat16)
        model.derived["cpu_bf16_dit"] = dit
    return model.derived["cpu_bf16_dit"]  # type: ignore[no-any-return]


@torch.no_grad()
def denoise(model: SmallModel, noise_gens: Sequence[torch.Generator], length: int,
            cross: torch.Tensor, glob: torch.Tensor, steps: int, cfg_coef: float,
            neg_cross: torch.Tensor | None, precision: str) -> torch.Tensor:
    """Ping-pong sampling of ``len(noise_gens)`` latents ``(B, C, length)``.

    With ``cfg_coef == 1`` the DiT runs once per step on the conditional rows only; otherwise
    the conditional and unconditional (zero or negative-prompt) rows share one forward pass.
    """
    b, c = len(noise_gens), model.config.latent_dim
    dev = device_of(model)
    x = torch.stack([torch.randn(c, length, generator=g) for g in noise_gens]).to(dev)
    t = schedule(steps)
    dit = cpu_bf16_dit(model) if precision == "bf16" and dev.type == "cpu" else model.dit
    with _autocast(precision, dev):
        if cfg_coef == 1.0:
            cond, g_emb = dit.project_cond(cross, glob)
        else:
            uncond = torch.zeros_like(cross) if neg_cross is None else neg_cross
            cond, g_emb = dit.project_cond(torch.cat((cross, uncond)), torch.cat((glob, glob)))
        for i in range(steps):
            ts = torch.full((b,), float(t[i]), device=dev)
            if cfg_coef == 1.0:
                v = dit(x, ts, cond, g_emb).float()
            else:
                both = dit(torch.cat((x, x)), torch.cat((ts, ts)), cond, g_emb).float()
                v_cond, v_uncond = both.chunk(2)
                v = v_uncond + (v_cond - v_uncond) * cfg_coef
            denoised = x - t[i] * v
            t_next = float(t[i + 1])
            if t_next > 0:
                fresh = torch.stack([torch.randn(c, length, generator=g)
                                     for g in noise_gens]).to(dev)
                x = (1 - t_next) * denoised + t_next * fresh
            else:
                x = denoised
    return x


def fast_cpu_decode(model: SmallModel, precision: str) -> bool:
    """Whether ``decode`` uses the channels-last bf16 decoder (``oobleck``): bf16 asked for, on
    a CPU that computes bf16 natively (elsewhere bf16 is emulated, slower than fp32)."""
    from ..precision import cpu_has_native_bf16

    return precision == "bf16" and device_of(model).type == "cpu" and cpu_has_native_bf16()


def cpu_decoder(model: SmallModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decoder as ``oobleck.ChannelsLastDecoder`` at bf16, built once per model."""
    if "cpu_decoder" not in model.derived:
        from .oobleck import ChannelsLastDecoder

        model.derived["cpu_decoder"] = ChannelsLastDecoder(model.decoder, torch.bfloat16)
    return model.derived["cpu_decoder"]  # type: ignore[no-any-return]


@torch.no_grad()
def decode(model: SmallModel, latents: torch.Tensor, precision: str = "fp32",
           chunk: int | None = DECODE_CHUNK_LATENTS,
           overlap: int = DECODE_OVERLAP_LATENTS) -> torch.Tensor:
    """Audio ``(B, channels, L * downsampling_ratio)`` from latents ``(B, C, L)``.

    ``chunk`` latents at a time (None: all at once), each decoded with ``overlap`` latents of
    context on both sides that are cut away, so memory is bounded by the chunk while the result
    equals a whole decode up to float rounding (the context exceeds the receptive field).
    fp32 runs diffusers' decoder as it is; bf16 on a CPU with native bf16 the channels-last
    decoder (``fast_cpu_decode``), elsewhere diffusers' decoder under autocast.
    """
    dev = device_of(model)
    z = latents.float().to(dev) * model.config.pretransform_scale
    r, n = model.config.downsampling_ratio, z.shape[-1]
    if fast_cpu_decode(model, precision):
        decoder, precision = cpu_decoder(model), "fp32"  # no autocast: it casts itself
    else:
        decoder = model.decoder
    with _autocast(precision, dev):
        if chunk is None or n <= chunk + 2 * overlap:
            return decoder(z).float().cpu()
        out = torch.empty(z.shape[0], model.config.audio_channels, n * r)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            a, b = max(0, start - overlap), min(n, end + overlap)
            y = decoder(z[:, :, a:b]).float().cpu()
            out[:, :, start * r:end * r] = y[:, :, (start - a) * r:(end - a) * r]
    return out


def _check(prompts: Sequence[str], durations_s: Sequence[float], seeds: Sequence[int],
           steps: int, precision: str, negative_prompts: Sequence[str] | None) -> None:
    if not (len(prompts) == len(durations_s) == len(seeds)):
        raise GeneratorError(f"generate_small: {len(prompts)} prompts, {len(durations_s)} "
                             f"durations and {len(seeds)} seeds; give one of each per take")
    if negative_prompts is not None and len(negative_prompts) != len(prompts):
        raise GeneratorError(f"generate_small: {len(negative_prompts)} negative prompts for "
                             f"{len(prompts)} prompts; give one per take (or none)")
    if steps < 1:
        raise GeneratorError(f"generate_small: steps is {steps}; use 1 or more (Small: 8)")
    if precision not in PRECISIONS:
        raise GeneratorError(f"generate_small: precision {precision!r}; use fp32, bf16 or "
                             f"fp16 (CUDA)")
    for d in durations_s:
        if not (d > 0 and math.isfinite(d)):
            raise GeneratorError(f"generate_small: duration {d!r} s; use a positive length")


def generate_small(model: SmallModel, prompts: Sequence[str], durations_s: Sequence[float],
                   seeds: Sequence[int], steps: int = 8, cfg_coef: float = 1.0,
                   negative_prompts: Sequence[str] | None = None,
                   precision: str = "fp32") -> list[np.ndarray]:
    """Generate one stereo take per prompt.

    Args:
        model: from ``load_small``.
        prompts: one text per take.
        durations_s: each take's length in seconds (up to the model's window, 11.9 s for Small;
            longer works but leaves what the model was trained on).
        seeds: each take's seed; a take depends only on its prompt, duration, seed and
            settings, not on the other takes of the call.
        steps: sampler steps (Small was distilled for 8).
        cfg_coef: classifier-free guidance; 1 (Small's default) runs no unconditional pass.
        negative_prompts: per take, the text guidance steers away from (with cfg_coef != 1).
        precision: "fp32", "bf16" (the DiT under autocast; on a CPU with native bf16 the
            channels-last bf16 decoder, on other CPUs the decoder stays fp32; ``bf16_error``
            measures the take's error) or "fp16" (CUDA).

    Returns:
        float32 arrays ``(channels, round(duration * sample_rate))``, in the order given.
    """
    _check(prompts, durations_s, seeds, steps, precision, negative_prompts)
    sr = model.sample_rate
    frames = [round(d * sr) for d in durations_s]
    texts = list(prompts) + (list(negative_prompts) if negative_prompts is not None
                             and cfg_coef != 1.0 else [])
    states = encode_text(model, texts, precision)  # one T5 pass for the whole call
    pos, neg = states[:len(prompts)], states[len(prompts):]
    cross, glob = conditioning(model, pos, durations_s)
    neg_cross = conditioning(model, neg, durations_s)[0] if len(neg) else None
    # Diffusers' decoder ran slower under bf16 autocast on a CPU than in fp32 (its 1-D
    # convolutions reorder channels-first tensors at every call); the channels-last decoder
    # pays (3.5x fp32 here), so it decodes at bf16 where the CPU computes bf16 natively.
    cuda = device_of(model).type == "cuda"
    decode_precision = precision if cuda or fast_cpu_decode(model, precision) else "fp32"
    out: list[np.ndarray | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(latent_length(model, f), []).append(i)
    for length, rows in groups.items():
        gens = [torch.Generator().manual_seed(int(seeds[i])) for i in rows]
        idx = torch.tensor(rows)
        lat = denoise(model, gens, length, cross[idx], glob[idx], steps, cfg_coef,
                      None if neg_cross is None else neg_cross[idx], precision)
        for j, i in enumerate(rows):  # row by row, as stable-audio-tools' iterate_batch: a
            # batched conv's kernels round differently from a single row's
            audio = decode(model, lat[j:j + 1], decode_precision)
            out[i] = audio[0, :, :frames[i]].numpy().astype(np.float32, copy=True)
    return [a for a in out if a is not None]


def bf16_error(model: SmallModel, prompt: str = "rain on a tin roof", duration_s: float = 2.0,
               seed: int = 0, steps: int = 8) -> dict[str, float]:
    """How far bf16 is from fp32 for one take, as relative RMS errors (RMS of the difference
    over RMS of the fp32 result): ``audio_rel_rms_error`` of the whole take as
    ``generate_small`` makes it at bf16, and ``decoder_rel_rms_error`` of the decoder alone
    (the fp32 take's latents decoded as bf16 decodes them); ``audio_rms`` of the fp32 take."""
    frames = round(duration_s * model.sample_rate)
    length = latent_length(model, frames)

    def latents(precision: str) -> torch.Tensor:
        states = encode_text(model, [prompt], precision)
        cross, glob = conditioning(model, states, [duration_s])
        gen = torch.Generator().manual_seed(int(seed))
        return denoise(model, [gen], length, cross, glob, steps, 1.0, None, precision)

    cuda = device_of(model).type == "cuda"
    low_decode = "bf16" if cuda or fast_cpu_decode(model, "bf16") else "fp32"
    lat = latents("fp32")
    ref = decode(model, lat, "fp32")[0, :, :frames].double()
    takes = {"audio": decode(model, latents("bf16"), low_decode),
             "decoder": decode(model, lat, low_decode)}
    rms = float(ref.pow(2).mean().sqrt())
    out = {"audio_rms": rms}
    for name, take in takes.items():
        err = float((take[0, :, :frames].double() - ref).pow(2).mean().sqrt())
        out[f"{name}_rel_rms_error"] = err / rms if rms > 0 else float("inf")
    return out
