"""Generator stage, test support: a tiny random Stable Audio Open Small in the published layout.

Input: a folder. Output: ``model_config.json`` (the published keys and structure at tiny widths)
and ``model.ckpt`` (``{"state_dict": ...}`` with stable-audio-tools' key names and nesting, see
``sat_layout``), and, for a Hugging Face cache, a tiny ``t5-base``: a random one-layer T5 encoder
of t5-base's width (stable-audio-tools takes the width from the name) with a SentencePiece
tokenizer trained offline, so prompts of different lengths tokenize to different lengths.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .config import CKPT_FILE, CONFIG_FILE, parse_config, published_config
from .sat_layout import DECODER, DIT, state_shapes

SMALL_REPO = "stabilityai/stable-audio-open-small"
T5_BASE_REPO = "t5-base"
T5_BASE_DIM = 768


def tiny_state_dict(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Random weights for every key of ``config``'s checkpoint, scaled so the tiny model's audio
    has a useful level. LayerNorm biases that stable-audio-tools keeps as zero buffers stay zero,
    its rotary frequencies are its own formula, snake parameters are log-scale."""
    import torch

    cfg = parse_config(config)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    last_conv_g = f"{DECODER}layers.{len(cfg.ae_strides) + 2}.weight_g"
    for key, shape in state_shapes(cfg).items():
        if key.endswith("rotary_pos_emb.inv_freq"):  # RotaryEmbedding's own buffer
            n = 2 * shape[0]
            out[key] = 1.0 / (10000 ** (torch.arange(0, n, 2).float() / n))
        elif key.startswith(DIT) and key.endswith(".beta"):  # LayerNorm(bias=False): zeros
            out[key] = torch.zeros(shape)
        elif key.endswith((".gamma", "_norm.weight")):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key == last_conv_g:  # a useful output level (about -20 dBFS) for mixing tests
            out[key] = 40.0 + 20.0 * torch.rand(shape, generator=g)
        elif key.endswith(".weight_g"):  # per output channel gain of a weight-normed conv
            out[key] = 0.4 + 0.2 * torch.rand(shape, generator=g)
        elif key.startswith("pretransform") and key.endswith(".bias"):
            out[key] = torch.zeros(shape)  # the audio follows the latents, not constant offsets
        elif len(shape) == 1:  # biases, snake's log-scale alpha and beta, number features
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1)
            out[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return out


def write_tiny_small(directory: str | Path, seed: int = 0) -> Path:
    """Write ``model_config.json`` and ``model.ckpt`` of a tiny random Small into ``directory``.

    Args:
        directory: created if missing.
        seed: seed of the random weights (same seed, same files).
    """
    from ...audio_io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in small_files(seed).items():
        with atomic_path(directory / name) as tmp:
            Path(tmp).write_bytes(data)
    return directory


def small_files(seed: int = 0) -> dict[str, bytes]:
    """The two files of a tiny ``stabilityai/stable-audio-open-small``, by name."""
    import torch

    config = published_config(tiny=True)
    buf = io.BytesIO()
    torch.save({"state_dict": tiny_state_dict(config, seed)}, buf)
    return {CONFIG_FILE: (json.dumps(config, indent=4) + "\n").encode(),
            CKPT_FILE: buf.getvalue()}


def t5_base_files(seed: int = 0) -> dict[str, bytes]:
    """The files of a tiny ``t5-base`` repository (its width, one tiny layer), by name."""
    import tempfile

    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    from transformers.utils import logging as hf_logging

    from ..dev.replica import T5_EXTRA_IDS, _train_spiece

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spiece.model").write_bytes(_train_spiece(seed))
        tok = T5Tokenizer.from_pretrained(str(d), extra_ids=T5_EXTRA_IDS)
        tok.save_pretrained(str(d / "tok"))
        vocab = -(-len(tok) // 64) * 64
        config = T5Config(vocab_size=vocab, d_model=T5_BASE_DIM, d_kv=8, d_ff=32, num_layers=1,
                          num_decoder_layers=1, num_heads=2, feed_forward_proj="relu",
                          architectures=["T5ForConditionalGeneration"])
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
        hf_logging.disable_progress_bar()
        model.save_pretrained(str(d / "model"))
        out["config.json"] = (d / "model" / "config.json").read_bytes()
        out["model.safetensors"] = (d / "model" / "model.safetensors").read_bytes()
        out["spiece.model"] = (d / "spiece.model").read_bytes()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            out[f] = (d / "tok" / f).read_bytes()
    return out


def write_small_hub_replica(hf_home: str | Path, seed: int = 0) -> Path:
    """Write tiny ``stabilityai/stable-audio-open-small`` and ``t5-base`` into the Hugging Face
    cache under ``<hf_home>/hub`` (``hf download``'s layout) and return ``hf_home``."""
    from ..dev.replica import write_repo

    hf_home = Path(hf_home)
    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    write_repo(hub, SMALL_REPO, small_files(seed))
    write_repo(hub, T5_BASE_REPO, t5_base_files(seed))
    return hf_home
