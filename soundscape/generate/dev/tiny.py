"""Generator stage, test support: write a tiny random AudioGen checkpoint.

Input: a directory. Output: ``state_dict.bin`` and ``compression_state_dict.bin`` in audiocraft's
export layout (``{'best_state', 'xp.cfg' (YAML text), 'version', 'exported'}``), loadable by the
same loader that loads ``facebook/audiogen-medium``. The text conditioner is a lookup table with
audiocraft's ``noop`` tokenizer, so nothing is downloaded. The weights are random: the audio is
noise-like, but its rate, length and determinism are those of the real pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_SAMPLE_RATE = 16000
TINY_FRAME_RATE = 50  # 16 kHz / hop 320, the same token rate as AudioGen-medium
TINY_MAX_DURATION_S = 3.0  # short window, so tests exercise extended generation cheaply


# The attention layout of the published AudioGen checkpoints (audiocraft's audiogen_lm.yaml and
# lm/default.yaml): audiocraft's own attention with packed projections, no biases, GELU.
AUDIOGEN_LAYOUT = {"memory_efficient": True, "bias_ff": False, "bias_attn": False,
                   "activation": "gelu"}


def tiny_configs(
    max_duration_s: float = TINY_MAX_DURATION_S, arch: str = "tiny",
    audiogen_layout: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hydra-style configs (LM, compression) of a random model, as plain dicts.

    ``arch="tiny"``: a few thousand parameters, for tests. ``arch="medium"``: AudioGen-medium's
    shape (48 layers, dim 1536, 24 heads, 4 codebooks of 2048, cross-attention to 1024-d text
    states, EnCodec at 16 kHz / 50 Hz), about 1.8 B parameters, for timing without the weights;
    its text states come from a lookup table instead of T5-large (a negligible share of the cost).
    ``audiogen_layout`` (default: for medium) uses the published checkpoints' attention layout
    (``AUDIOGEN_LAYOUT``) instead of torch's ``nn.MultiheadAttention`` with biases and ReLU.
    """
    if arch not in ("tiny", "medium"):
        raise ValueError(f"unknown arch {arch!r}; use tiny or medium")
    medium = arch == "medium"
    n_q, card, dim = (4, 2048, 1536) if medium else (4, 256, 32)
    lm_cfg: dict[str, Any] = {
        "lm_model": "transformer_lm",
        "device": "cpu",
        "dtype": "float32",
        "dataset": {"segment_duration": max_duration_s},
        "transformer_lm": {
            "n_q": n_q,
            "card": card,
            "dim": dim,
            "num_heads": 24 if medium else 2,
            "num_layers": 48 if medium else 2,
            "hidden_scale": 4 if medium else 2,
            "norm": "layer_norm",
            "norm_first": True,
            "causal": True,
            "bias_proj": False,
            "positional_embedding": "sin",
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(range(n_q)), "flatten_first": 0, "empty_initial": 0},
        },
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.1, "inference_coef": 3.0},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        },
        "conditioners": {
            "description": {"model": "lut", "lut": {"n_bins": 256, "dim": 1024 if medium else dim,
                                                    "tokenizer": "noop"}}
        },
    }
    compression_cfg: dict[str, Any] = {
        "compression_model": "encodec",
        "device": "cpu",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": TINY_SAMPLE_RATE,
            "channels": 1,
            "causal": False,
            "renormalize": False,
        },
        "seanet": {
            "dimension": 128 if medium else 16,
            "channels": 1,
            "n_filters": 32 if medium else 4,
            "n_residual_layers": 1,
            "ratios": [8, 5, 4, 2],  # hop 320
            "encoder": {},
            "decoder": {},
        },
        "rvq": {"n_q": n_q, "bins": card, "kmeans_init": False},
    }
    if audiogen_layout is None:
        audiogen_layout = medium
    if audiogen_layout:
        lm_cfg["transformer_lm"].update(AUDIOGEN_LAYOUT)
    return lm_cfg, compression_cfg


def build_random_model(arch: str = "tiny", seed: int = 0,
                       max_duration_s: float = TINY_MAX_DURATION_S, device: str = "cpu",
                       audiogen_layout: bool | None = None) -> Any:
    """``(compression_model, lm, lm_cfg, compression_cfg)`` with random weights on ``device``
    (the LM in float16 off the CPU, as ``audiogen.load_model`` does)."""
    from .. import quiet_xformers

    quiet_xformers()
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    lm_cfg, compression_cfg = tiny_configs(max_duration_s, arch, audiogen_layout)
    lm_cfg["device"] = compression_cfg["device"] = device
    lm_cfg["dtype"] = "float32" if device == "cpu" else "float16"
    torch.manual_seed(seed)
    compression = builders.get_compression_model(OmegaConf.create(compression_cfg))
    lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
    # AudioGen reads its window (max_duration) from here, as from a loaded model
    lm.cfg = OmegaConf.create(lm_cfg)  # type: ignore[assignment]
    if arch == "tiny":
        with torch.no_grad():
            # Random weights give near-silent, DC-heavy audio; larger LM weights give the tiny
            # model's output a useful level for mixing tests.
            for p in lm.parameters():
                p.mul_(4.0)
    return compression, lm, lm_cfg, compression_cfg


def write_tiny_model(directory: str | Path, seed: int = 0,
                     max_duration_s: float = TINY_MAX_DURATION_S) -> Path:
    """Write a tiny random AudioGen checkpoint into ``directory`` and return it.

    Args:
        directory: created if missing; two files are written into it.
        seed: torch seed for the random weights (same seed, same files' weights).
        max_duration_s: the model's generation window; longer takes use extension.
    """
    import torch
    from audiocraft import __version__ as audiocraft_version
    from omegaconf import OmegaConf

    from ...audio_io import atomic_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    compression, lm, lm_cfg, compression_cfg = build_random_model("tiny", seed, max_duration_s)
    for name, model, cfg in (
        ("state_dict.bin", lm, lm_cfg),
        ("compression_state_dict.bin", compression, compression_cfg),
    ):
        pkg = {
            "best_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg)),
            "version": audiocraft_version,
            "exported": True,
        }
        with atomic_path(directory / name) as tmp:
            torch.save(pkg, tmp)
    return directory
