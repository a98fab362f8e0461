"""Generator stage, Stable Audio Open Small: timing at the published shapes (imports torch).

Input: a batch size, a take length, a step count and a precision. Output: a dict of measured
seconds (text encoder, one DiT step, the decoder), seconds of compute per second of audio, and
the floor a step cannot beat on this machine (DiT weight bytes read per step over the measured
memory bandwidth; the step's FLOPs). The model is Small's published architecture (DiT 1024 x 16
layers, 8 heads; Oobleck 128 channels; T5-base's shape for the text encoder) with random weights
built in memory, so no download is needed; random weights cost what trained ones cost.

Precisions: ``fp32``; ``bf16`` (as ``generate_small`` runs it on a CPU: T5 and the DiT under
autocast, the DiT's Linear weights held in bf16, the channels-last bf16 decoder); ``bf16w`` (the
whole DiT in bf16, no autocast); ``int8`` (the DiT's Linear layers dynamically quantised to int8
with torch.ao). The three reduced precisions decode as ``bf16`` does; each part
runs through ``sample``'s own functions, so the benchmark times what a take costs.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .config import parse_config, published_config
from .model import NumberEmbedder, SmallDiT, SmallModel
from .sample import conditioning, cpu_bf16_dit, decode, denoise, latent_length

BENCH_PRECISIONS = ("fp32", "bf16", "bf16w", "int8")
_CACHE: dict[str, Any] = {}


def published_model(seed: int = 0) -> SmallModel:
    """Small's published architecture with random weights (cached for the process)."""
    if "model" in _CACHE:
        return _CACHE["model"]  # type: ignore[no-any-return]
    from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDecoder
    from transformers import T5Config, T5EncoderModel

    cfg = parse_config(published_config())
    torch.manual_seed(seed)
    dit = SmallDiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.02)
    decoder = OobleckDecoder(channels=cfg.ae_channels, input_channels=cfg.latent_dim,
                             audio_channels=cfg.audio_channels,
                             upsampling_ratios=list(cfg.ae_strides[::-1]),
                             channel_multiples=list(cfg.ae_c_mults))
    for m in decoder.modules():
        if hasattr(m, "weight_g"):
            torch.nn.utils.remove_weight_norm(m)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072,
                                 num_layers=12, num_heads=12, feed_forward_proj="relu"))
    for m in (dit, decoder, t5):
        m.eval().requires_grad_(False)
    model = SmallModel(cfg, dit, NumberEmbedder(cfg.cond_dim).eval(), torch.nn.Identity(),
                       decoder, None, t5, "random weights, published shapes")
    _CACHE["model"] = model
    return model


def _dit_for(model: SmallModel, precision: str) -> torch.nn.Module:
    key = f"dit-{precision}"
    if key not in _CACHE:
        if precision == "bf16w":
            _CACHE[key] = copy.deepcopy(model.dit).to(torch.bfloat16)
        elif precision == "int8":
            _CACHE[key] = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model.dit), {torch.nn.Linear}, dtype=torch.qint8)
        elif precision == "bf16":
            _CACHE[key] = cpu_bf16_dit(model)
        else:
            _CACHE[key] = model.dit
    return _CACHE[key]  # type: ignore[no-any-return]


@contextlib.contextmanager
def _autocast(on: bool) -> Iterator[None]:
    if on:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def _best(fn: Callable[[], object], repeats: int, cpu: dict[str, float] | None = None,
          name: str = "") -> float:
    """Best wall time of ``repeats`` runs after a warm-up; the matching process CPU time (all
    threads) goes into ``cpu[name]``: on a shared machine wall time includes waiting for a core,
    CPU time does not."""
    fn()  # warm-up: allocations, oneDNN's kernel choice
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, best_cpu = wall, used
    if cpu is not None:
        cpu[name] = best_cpu
    return best


def memory_bandwidth_gbs(mbytes: int = 256) -> float:
    """Bytes read + written per second by a large copy (GB/s), best of three."""
    a = torch.empty(mbytes * (1 << 20) // 4)
    b = torch.empty_like(a)
    t = _best(lambda: b.copy_(a), 3)
    return 2 * a.numel() * 4 / t / 1e9


def dit_flops(model: SmallModel, batch: int, latents: int) -> float:
    """Multiply-adds x 2 of one DiT step: every Linear on its tokens, attention's two matmuls."""
    cfg = model.config
    n = latents + 1  # the prepended global token
    ctx = len(cfg.cross_attn_ids) and (cfg.t5_max_length + 1)
    e = cfg.embed_dim
    per_layer = n * (3 * e * e + e * e) + n * e * e + ctx * 2 * e * e + n * e * e \
        + n * (8 * e * e + 4 * e * e) + 2 * n * n * e + 2 * n * ctx * e
    return 2.0 * batch * (cfg.depth * per_layer + n * 2 * cfg.latent_dim * e)


def decoder_flops_per_audio_s(model: SmallModel) -> float:
    """FLOPs of the Oobleck decoder per second of audio: per block a transposed conv
    (4 Cin Cout at the output rate) and three residual units (kernel 7 + kernel 1 convs:
    16 C^2 each at the output rate), plus the two outer convs."""
    cfg = model.config
    mults = (1, *cfg.ae_c_mults)
    rate = cfg.sample_rate / cfg.downsampling_ratio
    flops = 2 * cfg.latent_dim * mults[-1] * cfg.ae_channels * 7 * rate
    for k, stride in enumerate(cfg.ae_strides[::-1]):
        cin = mults[len(mults) - 1 - k] * cfg.ae_channels
        cout = mults[len(mults) - 2 - k] * cfg.ae_channels
        rate *= stride
        flops += 4 * cin * cout * rate + 3 * 16 * cout * cout * rate
    return flops + 2 * cfg.ae_channels * cfg.audio_channels * 7 * rate


def benchmark_small(batch: int, seconds: float, steps: int = 8, precision: str = "fp32",
                    repeats: int = 1, timed_steps: int = 2,
                    decode_seconds: float | None = 2.0) -> dict[str, float | str]:
    """Time one take of ``seconds`` at ``batch`` on Small's published shapes.

    The DiT step is timed ``timed_steps`` times (best kept) and scaled to ``steps``; the decoder
    decodes the whole batch in its chunks. ``compute_s_per_audio_s`` is the total over the audio
    made (``batch * seconds``). The decoder's cost is linear in the length (it runs in
    chunks), so it is timed on ``decode_seconds`` of each row (None: all) and scaled. ``*_cpu_s``
    are process CPU seconds (all threads) of the same runs.
    """
    if precision not in BENCH_PRECISIONS:
        raise ValueError(f"precision {precision!r}; use one of {', '.join(BENCH_PRECISIONS)}")
    model = published_model()
    cfg = model.config
    length = latent_length(model, round(seconds * cfg.sample_rate))
    dit = _dit_for(model, precision)
    dtype = torch.bfloat16 if precision == "bf16w" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.latent_dim, length, generator=g).to(dtype)
    t = torch.full((batch,), 0.5, dtype=dtype)
    cross = torch.randn(batch, cfg.t5_max_length + 1, cfg.cond_dim, generator=g).to(dtype)
    glob = torch.randn(batch, cfg.cond_dim, generator=g).to(dtype)
    ids = torch.randint(0, 32000, (batch, cfg.t5_max_length), generator=g)
    cpu: dict[str, float] = {}
    reduced = precision != "fp32"
    with torch.no_grad():
        with _autocast(reduced):  # as sample.encode_text at bf16
            t5_s = _best(lambda: model.text_encoder(input_ids=ids), repeats, cpu, "t5")
        with _autocast(precision == "bf16"):
            cond, g_emb = dit.project_cond(cross, glob)  # type: ignore[operator]
            step_s = _best(lambda: dit(x, t, cond, g_emb), max(timed_steps, repeats), cpu,
                           "step")
        dec_len = length if decode_seconds is None else min(length, latent_length(
            model, round(decode_seconds * cfg.sample_rate)))
        z = torch.randn(batch, cfg.latent_dim, dec_len, generator=g)

        def run_decoder() -> None:
            for j in range(batch):  # row by row, in chunks, as generate_small decodes
                decode(model, z[j:j + 1], "bf16" if reduced else "fp32")

        scale = length / dec_len
        decode_s = _best(run_decoder, repeats, cpu, "decode") * scale
        cpu["decode"] *= scale
    audio_s = batch * seconds
    total = t5_s + steps * step_s + decode_s
    total_cpu = cpu["t5"] + steps * cpu["step"] + cpu["decode"]
    weight_bytes = sum(p.numel() * p.element_size() for p in dit.parameters())
    if precision == "int8":  # packed int8 Linear weights are not parameters
        weight_bytes += sum(m.weight().numel() for m in dit.modules()  # type: ignore[operator]
                            if hasattr(m, "weight") and callable(m.weight))
    bw = memory_bandwidth_gbs()
    flops = dit_flops(model, batch, length)
    return {
        "precision": precision, "batch": batch, "seconds": seconds, "steps": steps,
        "latents": length, "t5_s": t5_s, "dit_step_s": step_s, "decode_s": decode_s,
        "total_s": total, "compute_s_per_audio_s": total / audio_s,
        "dit_step_cpu_s": cpu["step"], "decode_cpu_s": cpu["decode"], "total_cpu_s": total_cpu,
        "cpu_s_per_audio_s": total_cpu / audio_s,
        "dit_s_per_audio_s": steps * step_s / audio_s, "decode_s_per_audio_s": decode_s / audio_s,
        "dit_weight_mb": weight_bytes / 1e6, "bandwidth_gbs": bw,
        "floor_step_s_weights": weight_bytes / (bw * 1e9),
        "dit_step_gflop": flops / 1e9, "dit_gflops_achieved": flops / step_s / 1e9,
        "decode_gflop_per_audio_s": decoder_flops_per_audio_s(model) / 1e9,
        "threads": torch.get_num_threads(),
    }


def bf16_take_error(seconds: float = 2.0, steps: int = 8, seed: int = 0) -> dict[str, float]:
    """How far a bf16 take is from the fp32 take of the same seed on the published shapes, as
    relative RMS errors (RMS of the difference over the fp32 take's RMS): ``take`` (T5, DiT
    and decoder at bf16, as ``generate_small`` runs them on a CPU) and ``decoder`` (the fp32
    take's latents through the bf16 decoder). Random weights: the figure says how much bf16
    rounding the computation adds, not how a trained model's output sounds."""
    model = published_model()
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32000, (1, cfg.t5_max_length), generator=g)
    frames = round(seconds * cfg.sample_rate)
    length = latent_length(model, frames)

    def latents(precision: str) -> torch.Tensor:
        with torch.no_grad(), _autocast(precision == "bf16"):  # as sample.encode_text
            states = model.text_encoder(input_ids=ids).last_hidden_state.float()
        cross, glob = conditioning(model, states, [seconds])
        gen = torch.Generator().manual_seed(seed)
        return denoise(model, [gen], length, cross, glob, steps, 1.0, None, precision)

    lat = latents("fp32")
    ref = decode(model, lat, "fp32")[..., :frames].double()
    rms = float(ref.pow(2).mean().sqrt())
    out = {}
    for name, audio in (("take", decode(model, latents("bf16"), "bf16")),
                        ("decoder", decode(model, lat, "bf16"))):
        out[name] = float((audio[..., :frames].double() - ref).pow(2).mean().sqrt()) / rms
    return out
