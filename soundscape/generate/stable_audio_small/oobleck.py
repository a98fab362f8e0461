"""Generator stage, Stable Audio Open Small: the Oobleck decoder laid out for a CPU (imports torch).

Input: diffusers' ``OobleckDecoder`` with its weight norm folded (``model.load_small``). Output:
``ChannelsLastDecoder``, the same function (latents ``(B, C, L)`` -> audio ``(B, channels,
L * downsampling_ratio)``) computed another way, for bf16 on a CPU:

- every convolution runs as a 2-D convolution over ``(B, C, 1, T)`` in channels-last memory
  (time-major, channels innermost). oneDNN's 1-D convolutions on channels-first tensors reorder
  their input and output on every call; measured here at 128 channels and 5 s of audio, a 1x1
  convolution took 97 ms channels-first and 24 ms channels-last, a kernel-7 one 114 and 67 ms;
- weights are cast and laid out once, not per call (autocast casts them on every forward);
- Snake (``x + sin(alpha x)^2 / beta``) runs as five passes, four of them in place, with
  ``exp(alpha)`` and ``1 / (exp(beta) + 1e-9)`` computed once, instead of diffusers' passes
  that allocate a tensor each and recompute both exponentials at every call. (A Snake fused
  by ``torch.compile`` measured 37 ms against these passes' 56 ms at the largest shape, but
  costs 10-16 s of compilation in every new process: it would pay only after about a minute
  of audio, so it is not used.)

The result differs from the fp32 decoder by bf16 rounding (``decoder_error`` measures it); the
fp32 path keeps using diffusers' module unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last


@dataclass(frozen=True)
class _Conv:
    weight: torch.Tensor  # (out, in, 1, k) channels-last; (in, out, 1, k) when transposed
    bias: torch.Tensor | None
    stride: int
    padding: int
    dilation: int
    transposed: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, stride=(1, self.stride),
                                      padding=(0, self.padding), dilation=(1, self.dilation))
        return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride),
                        padding=(0, self.padding), dilation=(1, self.dilation))


@dataclass(frozen=True)
class _Snake:
    alpha: torch.Tensor  # exp(alpha), (1, C, 1, 1)
    inv_beta: torch.Tensor  # 1 / (exp(beta) + 1e-9), (1, C, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mul(x, self.alpha).sin_()
        # mul_ then add_, not addcmul: at bf16 in channels-last memory addcmul measured 82 ms
        # on 128 x 221184 samples, these two 56 ms (one more bf16 rounding, one ulp at most)
        return s.square_().mul_(self.inv_beta).add_(x)


def _conv(m: Any, dtype: torch.dtype) -> _Conv:
    assert isinstance(m, nn.Conv1d | nn.ConvTranspose1d), type(m)
    if hasattr(m, "weight_g") or hasattr(m, "parametrizations"):
        raise ValueError("fold the decoder's weight norm first (torch.nn.utils."
                         "remove_weight_norm)")
    w = m.weight.detach()[:, :, None, :].to(dtype).contiguous(memory_format=_CL)
    b = None if m.bias is None else m.bias.detach().to(dtype)
    return _Conv(w, b, int(m.stride[0]), int(m.padding[0]), int(m.dilation[0]),
                 isinstance(m, nn.ConvTranspose1d))


def _snake(m: Any, dtype: torch.dtype) -> _Snake:
    alpha, beta = m.alpha.detach().float(), m.beta.detach().float()
    if getattr(m, "logscale", True):
        alpha, beta = alpha.exp(), beta.exp()
    return _Snake(alpha[..., None].to(dtype), (beta + 1e-9).reciprocal()[..., None].to(dtype))


class ChannelsLastDecoder:
    """diffusers' ``OobleckDecoder`` at ``dtype`` in channels-last memory (see the module's
    docstring); called like the decoder it was built from."""

    def __init__(self, decoder: Any, dtype: torch.dtype = torch.bfloat16) -> None:
        """``decoder``: diffusers' ``OobleckDecoder``, weight norm folded."""
        self.dtype = dtype
        self.conv_in = _conv(decoder.conv1, dtype)
        self.blocks: list[tuple[_Snake, _Conv, list[tuple[_Snake, _Conv, _Snake, _Conv]]]] = []
        for block in decoder.block:
            units = [(_snake(u.snake1, dtype), _conv(u.conv1, dtype), _snake(u.snake2, dtype),
                      _conv(u.conv2, dtype))
                     for u in (block.res_unit1, block.res_unit2, block.res_unit3)]
            self.blocks.append((_snake(block.snake1, dtype), _conv(block.conv_t1, dtype), units))
        self.snake_out = _snake(decoder.snake1, dtype)
        self.conv_out = _conv(decoder.conv2, dtype)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Audio ``(B, channels, L * ratio)`` at ``dtype`` from latents ``(B, C, L)``."""
        h = self.conv_in(z.to(self.dtype)[:, :, None, :].contiguous(memory_format=_CL))
        for snake, up, units in self.blocks:
            h = up(snake(h))
            for snake1, conv1, snake2, conv2 in units:  # kernel-size-preserving padding
                h.add_(conv2(snake2(conv1(snake1(h)))))
        return self.conv_out(self.snake_out(h))[:, :, 0, :].contiguous()
