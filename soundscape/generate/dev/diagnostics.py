"""Generator stage, diagnostics: how far reduced precision moves the model's predictions.

Input: an ``AudioGen`` model, a ``decode.FastDecoder`` over its LM and token sequences. Output:
the guided next-token logits along given tokens (teacher forcing) and the KL divergence between
two sets of them. Used by benchmarks/generate.py for its float32-vs-bf16 sanity figure.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..decode import FastDecoder


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean KL(p || q) in nats between two sets of logits over the last axis."""
    lp = torch.log_softmax(p_logits.float(), dim=-1)
    lq = torch.log_softmax(q_logits.float(), dim=-1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@torch.no_grad()
def teacher_forced_logits(model: Any, decoder: FastDecoder, prompts: list[str],
                          codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided next-token logits the decoder gives along ``codes`` (one window).

    Args:
        model: the ``AudioGen`` (its ``cfg_coef`` from ``set_generation_params`` applies).
        decoder: a ``FastDecoder`` over ``model.lm``.
        prompts: one text per row of ``codes``.
        codes: ``[B, K, T]`` tokens, e.g. a generation at another precision.
    Returns:
        ``(logits [B, K, T, card] float32, valid [K, T] bool)``: entry ``t`` predicts
        ``codes[..., t]``; ``valid`` is False where the delay pattern predicts nothing.
    """
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    lm = model.lm
    attributes, _ = model._prepare_tokens_and_attributes(prompts, None)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    conditions = lm.condition_provider(lm.condition_provider.tokenize(attributes + null))
    batch, _, length = codes.shape
    pattern = lm.pattern_provider.get_pattern(length)
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id)
    steps = sequence.shape[-1]
    decoder.start(conditions, 2 * batch, steps)
    cfg_coef = model.generation_params["cfg_coef"]
    out = []
    for step in range(steps):  # the output at step s predicts the token at s + 1
        feed = sequence[..., step:step + 1]
        cond, uncond = decoder.step(torch.cat([feed, feed])).split(batch)
        out.append(uncond + (cond - uncond) * cfg_coef)
    by_step = torch.stack(out, dim=-2)  # [B, K, S, card]
    logits, _, valid = pattern.revert_pattern_logits(by_step.permute(0, 3, 1, 2), math.nan)
    return logits.permute(0, 2, 3, 1), valid
