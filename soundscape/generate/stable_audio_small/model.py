"""Generator stage, Stable Audio Open Small: the modules and the loader (imports torch).

Input: a folder with ``model_config.json`` + ``model.ckpt`` (stable-audio-tools' layout) and a
T5 encoder folder. Output: a ``SmallModel`` (DiT, seconds conditioner, T5, Oobleck decoder) in
eval mode. The Oobleck decoder is diffusers' ``OobleckDecoder`` (the checkpoint's keys mapped as
diffusers' ``convert_stable_audio.py`` maps them). The DiT is written here: diffusers'
``StableAudioDiTModel`` has no q/k LayerNorm, which Small's blocks have (``qk_norm: ln``); its
module names follow stable-audio-tools', so the checkpoint loads without renaming.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelNotFoundError
from .config import CKPT_FILE, CONFIG_FILE, SmallConfig, parse_config
from .sat_layout import (
    DECODER,
    DIT,
    ENCODER,
    PROMPT_PROJ,
    SECONDS,
    T5_DIMS,
    TIMESTEP_FEATURES,
    cond_embed_dim,
    conditioner_shapes,
    decoder_shapes,
    dit_shapes,
    rotary_dim,
)


class _LayerNorm(nn.Module):
    """stable-audio-tools' bias-free LayerNorm: ``gamma`` learnt, ``beta`` a zero buffer."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta: torch.Tensor = self.beta  # type: ignore[assignment]
        return F.layer_norm(x, x.shape[-1:], self.gamma, beta, self.eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first ``cos.shape[-1]`` channels, halves layout (GPT-NeoX)."""
    rd = cos.shape[-1]
    xr, rest = x[..., :rd].float(), x[..., rd:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = xr * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


class _Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int, dim_context: int | None, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        if dim_context is None:
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        else:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(dim_context, 2 * dim_context, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = nn.LayerNorm(head_dim, eps=1e-6)
            self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        if context is None:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        q = q.view(b, n, -1, self.head_dim).transpose(1, 2)
        k, v = (t.reshape(b, t.shape[1], -1, self.head_dim).transpose(1, 2) for t in (k, v))
        if k.shape[1] != self.heads:  # grouped-query attention, as stable-audio-tools repeats
            k, v = (t.repeat_interleave(self.heads // t.shape[1], dim=1) for t in (k, v))
        if self.qk_norm:
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if rope is not None:
            q, k = _rotate(q, *rope).to(v.dtype), _rotate(k, *rope).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.silu(gate)


class _FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # index 1 is stable-audio-tools' Identity, kept so the checkpoint's keys fit as they are
        self.ff = nn.Sequential(_SwiGLU(dim), nn.Identity(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class _Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, dim_context: int, qk_norm: bool):
        super().__init__()
        self.pre_norm = _LayerNorm(dim)
        self.self_attn = _Attention(dim, head_dim, None, qk_norm)
        self.cross_attend_norm = _LayerNorm(dim)
        self.cross_attn = _Attention(dim, head_dim, dim_context, qk_norm)
        self.ff_norm = _LayerNorm(dim)
        self.ff = _FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.pre_norm(x), rope=rope)
        x = x + self.cross_attn(self.cross_attend_norm(x), context=context)
        return x + self.ff(self.ff_norm(x))


class _Transformer(nn.Module):
    def __init__(self, cfg: SmallConfig):
        super().__init__()
        e = cfg.embed_dim
        self.project_in = nn.Linear(cfg.latent_dim, e, bias=False)
        self.project_out = nn.Linear(e, cfg.latent_dim, bias=False)
        rd = rotary_dim(cfg)
        self.rotary_pos_emb = nn.Module()
        self.rotary_pos_emb.register_buffer(
            "inv_freq", 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd)))
        self.layers = nn.ModuleList(_Block(e, cfg.head_dim, cond_embed_dim(cfg),
                                           cfg.qk_norm == "ln") for _ in range(cfg.depth))

    def rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq: torch.Tensor = self.rotary_pos_emb.inv_freq  # type: ignore[assignment]
        freqs = torch.arange(n, dtype=torch.float32, device=inv_freq.device)[:, None] \
            * inv_freq.float()[None, :]
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()


class SmallDiT(nn.Module):
    """Small's diffusion transformer: rectified-flow velocity for latents ``(B, C, L)``.

    The global embedding (seconds_total + timestep) is prepended as one token; the prompt's T5
    states and the seconds token are cross-attended; rotary positions in self-attention only.
    """

    def __init__(self, cfg: SmallConfig):
        super().__init__()
        e, ce = cfg.embed_dim, cond_embed_dim(cfg)
        ge = e if cfg.project_global_cond else cfg.global_cond_dim
        self.timestep_features = nn.Module()
        self.timestep_features.weight = nn.Parameter(torch.zeros(TIMESTEP_FEATURES // 2, 1))
        self.to_timestep_embed = nn.Sequential(nn.Linear(TIMESTEP_FEATURES, e), nn.SiLU(),
                                               nn.Linear(e, e))
        self.to_cond_embed = nn.Sequential(nn.Linear(cfg.cond_token_dim, ce, bias=False),
                                           nn.SiLU(), nn.Linear(ce, ce, bias=False))
        self.to_global_embed = nn.Sequential(nn.Linear(cfg.global_cond_dim, ge, bias=False),
                                             nn.SiLU(), nn.Linear(ge, ge, bias=False))
        self.preprocess_conv = nn.Conv1d(cfg.latent_dim, cfg.latent_dim, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.latent_dim, cfg.latent_dim, 1, bias=False)
        self.transformer = _Transformer(cfg)
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def project_cond(self, cross: torch.Tensor, global_cond: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The projected cross-attention tokens and global embedding; they do not change
        between steps, so the sampler computes them once."""
        return self.to_cond_embed(cross), self.to_global_embed(global_cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cross: torch.Tensor,
                global_embed: torch.Tensor) -> torch.Tensor:
        """Velocity for latents ``x`` (B, C, L) at noise levels ``t`` (B,), given projected
        cross tokens (B, S, D) and global embeddings (B, D) from ``project_cond``."""
        w: torch.Tensor = self.timestep_features.weight  # type: ignore[assignment]
        f = 2 * math.pi * t[:, None].to(w.dtype) @ w.T
        g = global_embed + self.to_timestep_embed(torch.cat((f.cos(), f.sin()), dim=-1))
        h = (self.preprocess_conv(x) + x).transpose(1, 2)
        h = torch.cat((g[:, None, :].to(h.dtype), self.transformer.project_in(h)), dim=1)
        n = h.shape[1]
        if n not in self._rope:
            self._rope[n] = self.transformer.rope(n)
        rope = self._rope[n]
        for layer in self.transformer.layers:
            h = layer(h, cross, rope)
        out = self.transformer.project_out(h).transpose(1, 2)[:, :, 1:]
        return self.postprocess_conv(out) + out


class NumberEmbedder(nn.Module):
    """stable-audio-tools' number conditioner: [x, sin, cos] of learnt frequencies -> Linear."""

    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        fourier = nn.Module()
        fourier.weights = nn.Parameter(torch.zeros(dim // 2))
        self.embedding = nn.Sequential(fourier, nn.Linear(dim + 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = self.embedding[0].weights  # type: ignore[assignment]
        x = x[:, None].to(w.dtype)
        freqs = x * w[None, :] * 2 * math.pi
        return self.embedding[1](torch.cat((x, freqs.sin(), freqs.cos()), dim=-1))


@dataclass
class SmallModel:
    """A loaded Stable Audio Open Small."""

    config: SmallConfig
    dit: SmallDiT
    seconds: NumberEmbedder
    prompt_proj: nn.Module  # Identity for Small (T5-base is already cond_dim wide)
    decoder: nn.Module  # diffusers' OobleckDecoder, weight norm folded
    tokenizer: Any
    text_encoder: Any
    source: str  # where the weights came from, for messages
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # built from the weights on first use (sample.cpu_decoder's bf16 decoder)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate


def _mismatch(where: str, missing: list[str], shapes: list[str]) -> ModelNotFoundError:
    parts = []
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        parts.append(f"lacks {len(missing)} keys the config needs ({', '.join(missing[:3])}"
                     f"{more})")
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        parts.append(f"has {len(shapes)} keys of another shape ({'; '.join(shapes[:3])}{more})")
    return ModelNotFoundError(f"{where}: the checkpoint does not match model_config.json: "
                              f"{' and '.join(parts)}; use the model.ckpt published with this "
                              f"config (stabilityai/stable-audio-open-small)")


def check_state(state: dict[str, Any], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise one ``ModelNotFoundError`` naming the missing and misshapen keys, if any."""
    missing = [k for k in expected if k not in state]
    shapes = [f"{k} is {tuple(state[k].shape)}, expected {expected[k]}"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or shapes:
        raise _mismatch(where, missing, shapes)


def decoder_state(state: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    """stable-audio-tools' Oobleck decoder keys -> diffusers' ``OobleckDecoder`` keys."""
    out: dict[str, Any] = {}
    res = {"2": "res_unit1", "3": "res_unit2", "4": "res_unit3"}
    unit = {"layers.0": "snake1", "layers.1": "conv1", "layers.2": "snake2", "layers.3": "conv2"}
    for key, value in state.items():
        if not key.startswith(DECODER):
            continue
        parts = key[len(DECODER):].split(".")  # layers.<i>.<rest>
        i, rest = int(parts[1]), parts[2:]
        if i == 0:
            name = "conv1." + ".".join(rest)
        elif i == n_blocks + 1:
            name = "snake1." + ".".join(rest)
        elif i == n_blocks + 2:
            name = "conv2." + ".".join(rest)
        else:  # a DecoderBlock: layers.<j> = snake, transposed conv, three residual units
            j = rest[1]
            head = {"0": "snake1", "1": "conv_t1"}.get(j) or res[j]
            tail = rest[2:]
            if j in res:
                tail = [unit[".".join(tail[:2])], *tail[2:]]
            name = f"block.{i - 1}.{head}." + ".".join(tail)
        if name.split(".")[-1] in ("alpha", "beta"):
            value = value[None, :, None]  # diffusers' Snake1d keeps (1, C, 1)
        out[name] = value
    return out


def _fold_weight_norm(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "weight_g"):
            torch.nn.utils.remove_weight_norm(m)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ModelNotFoundError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}:"
                                 f" {first}); download model.ckpt again") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ModelNotFoundError(f"{path}: holds no state_dict of tensors; expected "
                                 f"stable-audio-tools' {{'state_dict': ...}}")
    return state


def load_small(model_dir: str | Path, text_encoder_dir: str | Path | None = None,
               log: Callable[[str], None] | None = None) -> SmallModel:
    """Load Small from a folder holding the published ``model_config.json`` + ``model.ckpt``.

    Args:
        model_dir: the folder (a hub snapshot or a copy of one).
        text_encoder_dir: a folder with the T5 encoder and tokenizer the config names
            (``t5-base``); default: the Hugging Face cache, downloaded there when missing and
            online (``models.ensure_text_encoder``).
        log: progress messages.

    Raises:
        ModelNotFoundError: files missing, unreadable, or not matching each other.
    """
    from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDecoder

    from ..models import ensure_text_encoder

    model_dir = Path(model_dir)
    missing = [f for f in (CONFIG_FILE, CKPT_FILE) if not (model_dir / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"model directory {model_dir} lacks {', '.join(missing)}; it must hold "
            f"stable-audio-tools' layout ({CONFIG_FILE} + {CKPT_FILE}), e.g. a snapshot of "
            f"stabilityai/stable-audio-open-small")
    cfg_path = model_dir / CONFIG_FILE
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{cfg_path}: not readable JSON ({e})") from None
    cfg = parse_config(raw, str(cfg_path))
    state = read_checkpoint(model_dir / CKPT_FILE)
    where = str(model_dir / CKPT_FILE)
    check_state(state, {**dit_shapes(cfg), **conditioner_shapes(cfg), **decoder_shapes(cfg)},
                where)
    if not any(k.startswith(ENCODER) for k in state):
        raise _mismatch(where, [ENCODER + "*"], [])

    dit = SmallDiT(cfg)
    dit.load_state_dict({k[len(DIT):]: v for k, v in state.items() if k.startswith(DIT)})
    seconds = NumberEmbedder(cfg.cond_dim)
    seconds.load_state_dict({"embedding." + k[len(SECONDS):]: v for k, v in state.items()
                             if k.startswith(SECONDS)})
    prompt_proj: nn.Module = nn.Identity()
    if PROMPT_PROJ + "weight" in state:
        w = state[PROMPT_PROJ + "weight"]
        prompt_proj = nn.Linear(w.shape[1], w.shape[0])
        prompt_proj.load_state_dict({"weight": w, "bias": state[PROMPT_PROJ + "bias"]})
    decoder = OobleckDecoder(channels=cfg.ae_channels, input_channels=cfg.latent_dim,
                             audio_channels=cfg.audio_channels,
                             upsampling_ratios=list(cfg.ae_strides[::-1]),
                             channel_multiples=list(cfg.ae_c_mults))
    decoder.load_state_dict(decoder_state(state, len(cfg.ae_strides)))
    _fold_weight_norm(decoder)

    t5_dir = Path(text_encoder_dir) if text_encoder_dir is not None else ensure_text_encoder(
        cfg.t5_name, "stable-audio-open-small", log)
    tokenizer, text_encoder = _load_t5(t5_dir, cfg)
    for m in (dit, seconds, prompt_proj, decoder):
        m.eval().requires_grad_(False)
    return SmallModel(cfg, dit, seconds, prompt_proj, decoder, tokenizer, text_encoder,
                      str(model_dir))


def _load_t5(t5_dir: Path, cfg: SmallConfig) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(t5_dir))
        encoder = T5EncoderModel.from_pretrained(str(t5_dir)).eval().requires_grad_(False)
    except Exception as e:  # transformers raises OSError, ValueError, ... for a broken folder
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ModelNotFoundError(f"{t5_dir}: the text encoder '{cfg.t5_name}' could not be "
                                 f"loaded ({type(e).__name__}: {first}); download it again "
                                 f"with 'hf download {cfg.t5_name}'") from None
    width = T5_DIMS.get(cfg.t5_name)
    if width is not None and encoder.config.d_model != width:
        raise ModelNotFoundError(f"{t5_dir}: the text encoder is {encoder.config.d_model} wide, "
                                 f"but '{cfg.t5_name}' is {width}; it is not {cfg.t5_name}")
    return tokenizer, encoder
