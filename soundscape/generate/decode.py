"""Generator stage: a faster token decoding loop over audiocraft's own LM weights.

Input: an ``AudioGen`` model (its ``LMModel`` modules, used in place, never copied or exported),
the conditioning attributes of a batch and audiocraft's generation parameters. Output: the same
``[B, K, T]`` codes that ``AudioGen._generate_tokens`` returns, token for token in float32 with
the same seeds (tests/test_decode.py checks this against stock audiocraft).

What differs from audiocraft's loop, and why:

- The text conditioning is encoded once per take, and each layer's cross-attention keys and
  values are projected once per take, instead of at every step of every layer (audiocraft
  recomputes them: about an eighth of AudioGen-medium's weights read again each step).
- Self-attention keys and values go into a cache preallocated for the whole window instead of
  growing by ``torch.cat`` every step, and only the last position's logits are computed.
- At reduced precision (bf16, fp16) the matrix products run in that precision but the residual
  stream, the layer norms, the positional embedding and the sampling stay in float32, as under
  the fp16 autocast AudioGen was trained with; casting the whole model (``lm.to(bf16)``) would
  also round the sinusoid's positions, which bf16 cannot count past 256.
- Both classifier-free-guidance halves run in one forward pass (as audiocraft does by default)
  and sampling goes through audiocraft's own top-k/top-p functions, so soundscape's per-row
  seeded sampler (``audiogen.per_row_sampling``) applies unchanged.
- On CUDA the one-token step can be captured with ``torch.compile(mode="reduce-overhead")``
  (CUDA graphs). That needs fixed shapes: the step then attends over the whole preallocated
  cache with a mask. If compiling or capturing fails, decoding continues eagerly. This path has
  not been measured on a GPU (none was available); on a CPU its fixed-shape step is tested.

Models this loop does not cover (rotary embeddings, grouped keys/values, QK layer norm, limited
past context, prepended or summed conditions, two-step guidance) make ``unsupported`` return a
reason, and the caller uses audiocraft's own loop.

Only ``audiogen.py`` imports this module, so torch is still imported only when generating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from audiocraft.modules.transformer import StreamingMultiheadAttention, create_sin_embedding
from audiocraft.utils import utils as ac_utils
from torch import nn
from torch.nn import functional as F

StepCallback = Callable[[int, int], None]
UNKNOWN_TOKEN = -1


def unsupported(lm: Any) -> str | None:
    """Why the fast loop cannot run ``lm`` (None when it can)."""
    tr = lm.transformer
    if type(lm).__name__ != "LMModel":
        return f"{type(lm).__name__} is not a plain LMModel"
    if getattr(lm, "two_step_cfg", False):
        return "two-step classifier-free guidance"
    if tr.positional_embedding != "sin":
        return f"positional embedding {tr.positional_embedding!r}"
    fuse = lm.fuser.fuse2cond
    if any(fuse.get(op) for op in ("prepend", "sum", "input_interpolate")):
        return "conditions fused other than by cross-attention"
    for layer in tr.layers:
        if not isinstance(layer.self_attn, StreamingMultiheadAttention):
            return "unknown attention module"
        for attn in (layer.self_attn, layer.cross_attention):
            if attn is None:
                continue
            if attn.rope is not None or attn.kv_repeat != 1 or attn.qk_layer_norm \
                    or attn.past_context is not None:
                return "rotary embedding, repeated keys/values, QK norm or limited context"
    return None


def _projections(attn: StreamingMultiheadAttention) -> tuple[torch.Tensor, torch.Tensor | None,
                                                             nn.Linear]:
    """``(in_proj_weight [3C, C], in_proj_bias, out_proj)`` of either attention layout."""
    if attn.custom:
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
    mha = attn.mha
    return mha.in_proj_weight, mha.in_proj_bias, mha.out_proj


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float()


@dataclass
class _Layer:
    """One transformer layer's weights (audiocraft's tensors) and float32 norm parameters."""

    norm_first: bool
    norms: list[tuple[torch.Tensor | None, torch.Tensor | None, float]]  # norm1, cross, norm2
    w_self: torch.Tensor
    b_self: torch.Tensor | None
    out_self: nn.Linear
    w_cross: torch.Tensor | None
    b_cross: torch.Tensor | None
    out_cross: nn.Linear | None
    linear1: nn.Linear
    linear2: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    scales: tuple[nn.Module, nn.Module, nn.Module | None]
    as_float32: bool


class FastDecoder:
    """audiocraft's LMModel decoded with a preallocated cache and once-per-take cross keys.

    Args:
        lm: the ``LMModel`` (eval mode), at the precision it should compute in.
        static: decode one-token steps with fixed shapes (the whole cache, masked), as CUDA
            graphs need; ``compile`` then captures that step.
        compile: capture the step with ``torch.compile(mode="reduce-overhead")``; None means
            on CUDA only. Any failure falls back to eager decoding with a note.
    """

    def __init__(self, lm: Any, static: bool | None = None, compile: bool | None = None) -> None:
        reason = unsupported(lm)
        if reason is not None:
            raise ValueError(f"the fast decoding loop does not support this model: {reason}")
        self.lm = lm
        first = next(iter(lm.parameters()))
        self.device, self.dtype = first.device, first.dtype
        on_cuda = self.device.type == "cuda"
        self.compile = on_cuda if compile is None else compile
        self.static = self.compile if static is None else (static or self.compile)
        self.notes: list[str] = []
        self._compiled: Callable[..., torch.Tensor] | None = None
        tr = lm.transformer
        self.num_heads = tr.layers[0].self_attn.num_heads
        self.dim = lm.dim
        self.max_period, self.pos_scale = tr.max_period, tr.positional_scale
        self.layers = [self._layer(layer) for layer in tr.layers]
        self.out_norm = None if lm.out_norm is None else self._norm(lm.out_norm)
        self._cache: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0

    @staticmethod
    def _norm(m: nn.LayerNorm) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        return _f32(m.weight), _f32(m.bias), m.eps

    def _layer(self, layer: Any) -> _Layer:
        w_self, b_self, out_self = _projections(layer.self_attn)
        cross = layer.cross_attention
        w_cross, b_cross, out_cross = _projections(cross) if cross is not None else \
            (None, None, None)
        norm_cross = self._norm(layer.norm_cross) if cross is not None else (None, None, 0.0)
        return _Layer(
            norm_first=layer.norm_first,
            norms=[self._norm(layer.norm1), norm_cross, self._norm(layer.norm2)],
            w_self=w_self, b_self=b_self, out_self=out_self,
            w_cross=w_cross, b_cross=b_cross, out_cross=out_cross,
            linear1=layer.linear1, linear2=layer.linear2, activation=layer.activation,
            scales=(layer.layer_scale_1, layer.layer_scale_2,
                    layer.layer_scale_cross if cross is not None else None),
            as_float32=layer.self_attn.attention_as_float32)

    # -- per take ---------------------------------------------------------------------------

    def start(self, condition_tensors: dict[str, Any], batch: int, capacity: int) -> None:
        """Project the cross-attention keys/values of the (guidance-doubled) conditioning once,
        and make room for ``capacity`` positions of self-attention keys/values."""
        seed = torch.zeros(batch, 1, self.dim, device=self.device, dtype=self.dtype)
        _, cross_src = self.lm.fuser(seed, condition_tensors)
        self._cross = []
        if cross_src is not None:
            cross_src = cross_src.to(self.dtype)
            c = self.dim
            for layer in self.layers:
                assert layer.w_cross is not None
                bk = None if layer.b_cross is None else layer.b_cross[c:2 * c]
                bv = None if layer.b_cross is None else layer.b_cross[2 * c:]
                k = F.linear(cross_src, layer.w_cross[c:2 * c], bk)
                v = F.linear(cross_src, layer.w_cross[2 * c:], bv)
                self._cross.append((self._heads(k), self._heads(v)))
        shape = (batch, self.num_heads, capacity, self.dim // self.num_heads)
        cache = self._cache
        if cache is None or cache[0][0].shape != shape:
            cache = ([torch.zeros(shape, device=self.device, dtype=self.dtype)
                      for _ in self.layers],
                     [torch.zeros(shape, device=self.device, dtype=self.dtype)
                      for _ in self.layers])
            self._cache = cache
            self._compiled = None  # a captured step is bound to the old buffers
        self.length = 0

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    # -- the network --------------------------------------------------------------------------

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None, as_float32: bool) -> torch.Tensor:
        dtype = q.dtype
        if as_float32:
            q, k, v = q.float(), k.float(), v.float()
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, h, t, d = x.shape
        return x.to(dtype).transpose(1, 2).reshape(b, t, h * d)

    def _self_block(self, i: int, layer: _Layer, h: torch.Tensor, pos: int | torch.Tensor,
                    mask: torch.Tensor | None) -> torch.Tensor:
        assert self._cache is not None
        b, t, _ = h.shape
        qkv = F.linear(h, layer.w_self, layer.b_self).view(b, t, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        cache_k, cache_v = self._cache[0][i], self._cache[1][i]
        if isinstance(pos, torch.Tensor):  # fixed shapes: write in place, attend to all
            cache_k.index_copy_(2, pos, k)
            cache_v.index_copy_(2, pos, v)
            keys, values = cache_k, cache_v
        else:
            cache_k[:, :, pos:pos + t] = k
            cache_v[:, :, pos:pos + t] = v
            keys, values = cache_k[:, :, :pos + t], cache_v[:, :, :pos + t]
        x = self._attend(q, keys, values, mask, layer.as_float32)
        return layer.out_self(x)

    def _cross_block(self, i: int, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        assert layer.w_cross is not None and layer.out_cross is not None
        c = self.dim
        bq = None if layer.b_cross is None else layer.b_cross[:c]
        q = self._heads(F.linear(h, layer.w_cross[:c], bq))
        k, v = self._cross[i]
        return layer.out_cross(self._attend(q, k, v, None, layer.as_float32))

    def _ln(self, x: torch.Tensor, norm: tuple[torch.Tensor | None, torch.Tensor | None, float]
            ) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), norm[0], norm[1], norm[2])

    def _forward(self, tokens: torch.Tensor, pos: int | torch.Tensor, t: int,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """Logits ``[B, K, card]`` (float32) of the last of ``t`` new positions at ``pos``."""
        lm, dt = self.lm, self.dtype
        k_books = tokens.shape[1]
        x = sum(lm.emb[k](tokens[:, k]).float() for k in range(k_books))
        assert isinstance(x, torch.Tensor)
        positions = torch.arange(t, device=x.device).view(1, -1, 1) + pos
        x = x + self.pos_scale * create_sin_embedding(positions, self.dim, self.max_period)
        for i, layer in enumerate(self.layers):
            s1, s2, sc = layer.scales
            if layer.norm_first:
                h = self._ln(x, layer.norms[0]).to(dt)
                x = x + s1(self._self_block(i, layer, h, pos, mask)).float()
                if sc is not None:
                    h = self._ln(x, layer.norms[1]).to(dt)
                    x = x + sc(self._cross_block(i, layer, h)).float()
                h = self._ln(x, layer.norms[2]).to(dt)
                x = x + s2(layer.linear2(layer.activation(layer.linear1(h)))).float()
            else:  # post-norm; audiocraft queries cross-attention with the layer's input here
                src = x.to(dt)
                x = self._ln(x + s1(self._self_block(i, layer, src, pos, mask)).float(),
                             layer.norms[0])
                if sc is not None:
                    x = self._ln(x + sc(self._cross_block(i, layer, src)).float(),
                                 layer.norms[1])
                f = layer.linear2(layer.activation(layer.linear1(x.to(dt))))
                x = self._ln(x + s2(f).float(), layer.norms[2])
        x = x[:, -1:]
        if self.out_norm is not None:
            x = self._ln(x, self.out_norm)
        x = x.to(dt)
        return torch.stack([lm.linears[k](x)[:, 0] for k in range(k_books)], dim=1).float()

    def _static_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        assert self._cache is not None
        capacity = self._cache[0][0].shape[2]
        mask = (torch.arange(capacity, device=tokens.device) <= pos).view(1, 1, 1, -1)
        return self._forward(tokens, pos, 1, mask)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens [B, K, T]`` (guidance-doubled) after what is cached; float32 logits of
        the next position ``[B, K, card]``."""
        t = tokens.shape[-1]
        pos = self.length
        if t > 1 or not self.static:
            mask = None
            if t > 1:  # causal over the new positions, which see everything cached before them
                q = torch.arange(pos, pos + t, device=tokens.device).view(-1, 1)
                mask = q >= torch.arange(pos + t, device=tokens.device).view(1, -1)
            logits = self._forward(tokens, pos, t, mask)
        else:
            pos_t = torch.tensor([pos], device=tokens.device)
            logits = self._run_static(tokens, pos_t)
        self.length += t
        return logits

    def _run_static(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.compile and self._compiled is None:
            try:
                self._compiled = torch.compile(self._static_step, mode="reduce-overhead",
                                               dynamic=False)
            except Exception as e:  # noqa: BLE001 - any backend failure means: run eagerly
                self._give_up_compile(e)
        if self._compiled is not None:
            try:
                return self._compiled(tokens, pos).clone()  # graph outputs are reused buffers
            except Exception as e:  # noqa: BLE001
                self._give_up_compile(e)
        return self._static_step(tokens, pos)

    def _give_up_compile(self, e: Exception) -> None:
        self.compile = False
        self._compiled = None
        self.notes.append(f"compiled decoding failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); decoding eagerly")

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, condition_tensors: dict[str, Any], batch: int, prompt: torch.Tensor | None,
                 max_gen_len: int, use_sampling: bool = True, temp: float = 1.0, top_k: int = 250,
                 top_p: float = 0.0, cfg_coef: float | None = None,
                 callback: StepCallback | None = None, started: bool = False) -> torch.Tensor:
        """Codes ``[B, K, max_gen_len]`` (prompt included), as ``LMModel.generate`` returns.

        ``condition_tensors`` are the conditioning of the batch followed by its null
        conditioning (guidance); ``started``: ``start`` was already called for this take.
        """
        lm = self.lm
        cfg_coef = lm.cfg_coef if cfg_coef is None else cfg_coef
        k_books, special = lm.num_codebooks, lm.special_token_id
        pattern = lm.pattern_provider.get_pattern(max_gen_len)
        codes = torch.full((batch, k_books, max_gen_len), UNKNOWN_TOKEN, dtype=torch.long,
                           device=self.device)
        start = 0
        if prompt is not None:
            start = prompt.shape[-1]
            codes[..., :start] = prompt
        sequence, _, mask = pattern.build_pattern_sequence(codes, special)
        first = pattern.get_first_step_with_timesteps(start)
        assert first is not None
        guided = bool(condition_tensors)
        if not started:
            self.start(condition_tensors, 2 * batch if guided else batch, sequence.shape[-1])
        else:
            self.length = 0
        total = sequence.shape[-1] - first
        prev = 0
        for offset in range(first, sequence.shape[-1]):
            feed = sequence[..., prev:offset]
            logits = self.step(torch.cat([feed, feed]) if guided else feed)
            if guided:
                cond, uncond = logits.split(batch)
                logits = uncond + (cond - uncond) * cfg_coef
            if use_sampling and temp > 0.0:
                probs = torch.softmax(logits / temp, dim=-1)
                if top_p > 0.0:
                    nxt = ac_utils.sample_top_p(probs, p=top_p)
                elif top_k > 0:
                    nxt = ac_utils.sample_top_k(probs, k=top_k)
                else:
                    nxt = ac_utils.multinomial(probs, num_samples=1)
            else:
                nxt = torch.argmax(logits, dim=-1, keepdim=True)
            valid = mask[..., offset:offset + 1].expand(batch, -1, -1)
            nxt[~valid] = special
            here = sequence[..., offset:offset + 1]
            sequence[..., offset:offset + 1] = torch.where(here == UNKNOWN_TOKEN, nxt, here)
            prev = offset
            if callback is not None:
                callback(1 + offset - first, total)
        out, _, _ = pattern.revert_pattern_sequence(sequence, special_token=UNKNOWN_TOKEN)
        out = out[..., :max_gen_len]
        assert (out >= 0).all(), "decoding left unknown tokens"
        return out


@torch.no_grad()
def generate_tokens(model: Any, decoder: FastDecoder, attributes: list[Any],
                    callback: StepCallback | None = None) -> torch.Tensor:
    """``AudioGen._generate_tokens(attributes, None)`` with the fast loop: the same chunks of
    ``max_duration`` advanced by ``extend_stride`` for long takes, conditioning encoded once.

    Args:
        model: the ``AudioGen`` whose generation parameters (``set_generation_params``) apply.
        decoder: a ``FastDecoder`` over ``model.lm``.
        attributes: one ``ConditioningAttributes`` per take.
        callback: ``callback(steps_done, steps_total)`` over the whole take.
    Returns:
        codes ``[B, K, frames]``.
    """
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    lm = model.lm
    params = dict(model.generation_params)
    batch = len(attributes)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    provider = lm.condition_provider
    conditions = provider(provider.tokenize(attributes + null))
    frame_rate = model.frame_rate
    total_len = int(model.duration * frame_rate)
    chunks: list[tuple[int, int]] = []  # (prompt length, chunk length), as audiocraft steps
    if model.duration <= model.max_duration:
        chunks.append((0, total_len))
    else:
        stride = int(frame_rate * model.extend_stride)
        done, prompt_len = 0, 0
        while done + prompt_len < total_len:
            chunk_s = min(model.duration - done / frame_rate, model.max_duration)
            chunk_len = int(chunk_s * frame_rate)
            chunks.append((prompt_len, chunk_len))
            prompt_len = chunk_len - stride
            done += stride
    patterns = [lm.pattern_provider.get_pattern(n) for _, n in chunks]
    steps = [pt.num_sequence_steps - pt.get_first_step_with_timesteps(p)
             for pt, (p, _) in zip(patterns, chunks, strict=True)]
    total_steps, done_steps = sum(steps), 0
    capacity = max(pt.num_sequence_steps for pt in patterns)
    decoder.start(conditions, 2 * batch, capacity)

    def progress(step: int, _total: int) -> None:
        if callback is not None:
            callback(done_steps + step, total_steps)

    pieces, prompt = [], None
    for (prompt_len, chunk_len), n_steps in zip(chunks, steps, strict=True):
        codes = decoder.generate(conditions, batch, prompt, chunk_len, params["use_sampling"],
                                 params["temp"], params["top_k"], params["top_p"],
                                 params["cfg_coef"], progress, started=True)
        pieces.append(codes[..., prompt_len:])
        prompt = codes[..., int(frame_rate * (model.extend_stride or 0)):]
        done_steps += n_steps
    return torch.cat(pieces, dim=-1)
