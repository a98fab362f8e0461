"""Generator stage, test support: a tiny offline replica of Stable Audio Open 1.0 as published.

Input: a folder. Output: the published diffusers layout of ``stabilityai/stable-audio-open-1.0``
at tiny sizes: ``model_index.json`` naming the pipeline's six components, and ``vae/``,
``text_encoder/``, ``tokenizer/``, ``projection_model/``, ``transformer/`` and ``scheduler/`` each
written by its own class's ``save_pretrained`` (as diffusers' ``scripts/convert_stable_audio.py``
writes the real one), so every config key is the class's own. What is tiny: the widths and depths;
what is kept: the autoencoder's strides (hop 2048 at 44.1 kHz, stereo), the DiT's window of 1024
latents (47.55 s), the projection's 0-512 s range, the tokenizer's 128-token padding, and the
published scheduler configuration (``CosineDPMSolverMultistepScheduler``, v-prediction, sigmas 0.3
to 500, exponential schedule, second order). The T5 config is written here by hand (T5-base's
structure at width 16) and its SentencePiece tokenizer is trained offline in well under a second.

``write_sao1_hub`` writes the same files as the cached snapshot of the hub repository, beside the
files users never need (the stable-audio-tools checkpoint at the root, README, licence), so tests
can check that a first render downloads only what the engine reads. Weights are random: the audio
is noise, through exactly the code path of the published weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from .replica import _train_spiece, write_repo

SAO_1_REPO = "stabilityai/stable-audio-open-1.0"
# The published model_index.json (the projection model's module is the pipeline's own package)
MODEL_INDEX = {
    "_class_name": "StableAudioPipeline",
    "_diffusers_version": "0.30.0.dev0",
    "projection_model": ["stable_audio", "StableAudioProjectionModel"],
    "scheduler": ["diffusers", "CosineDPMSolverMultistepScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "StableAudioDiTModel"],
    "vae": ["diffusers", "AutoencoderOobleck"],
}
PUBLISHED_SCHEDULER = {"sigma_min": 0.3, "sigma_max": 500.0, "sigma_data": 1.0,
                       "sigma_schedule": "exponential", "solver_order": 2,
                       "prediction_type": "v_prediction", "rho": 7.0,
                       "solver_type": "midpoint", "lower_order_final": True,
                       "euler_at_final": False, "final_sigmas_type": "zero"}
TOKEN_MAX_LENGTH = 128  # T5-base padding length in the published tokenizer config
T5_DIM = 16  # T5-base is 768
# Files of the hub repository the diffusers engine never reads (the stable-audio-tools export
# at the root is 4.85 GB twice over); written as small placeholders
UNREAD_FILES = ("model.ckpt", "model.safetensors", "model_config.json", "README.md",
                "LICENSE.md", "stable_audio_light.png")


def sao1_files(seed: int = 0) -> dict[str, bytes]:
    """The published diffusers layout of a tiny Stable Audio Open 1.0, by relative path."""
    import diffusers
    import torch
    import transformers
    from diffusers.pipelines.stable_audio.modeling_stable_audio import (
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spiece").mkdir()
        (d / "spiece" / "spiece.model").write_bytes(_train_spiece(seed))
        tok = getattr(transformers, "T5TokenizerFast")(  # noqa: B009 - typed stubs lack itvocab_file=str(d / "spiece" / "spiece.model"),
                              model_max_length=TOKEN_MAX_LENGTH, extra_ids=100)
        tok.save_pretrained(str(d / "tokenizer"))
        config = T5Config(vocab_size=-(-len(tok) // 64) * 64, d_model=T5_DIM, d_kv=4,
                          d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4,
                          feed_forward_proj="relu", dropout_rate=0.1,
                          architectures=["T5EncoderModel"])
        T5EncoderModel(config).eval().save_pretrained(str(d / "text_encoder"))
        StableAudioProjectionModel(text_encoder_dim=T5_DIM, conditioning_dim=T5_DIM,
                                   min_value=0, max_value=512).save_pretrained(
            str(d / "projection_model"))
        dit: Any = diffusers.StableAudioDiTModel(sample_size=1024, in_channels=8, num_layers=2,
                                  attention_head_dim=8, num_attention_heads=4,
                                  num_key_value_attention_heads=2, out_channels=8,
                                  cross_attention_dim=16, time_proj_dim=16,
                                  global_states_input_dim=2 * T5_DIM,
                                  cross_attention_input_dim=T5_DIM)
        with torch.no_grad():  # a useful output level from random weights
            dit.proj_out.weight.mul_(8.0)
        dit.save_pretrained(str(d / "transformer"))
        vae: Any = diffusers.AutoencoderOobleck(
            encoder_hidden_size=4, downsampling_ratios=[2, 4, 4, 8, 8],
            channel_multiples=[1, 2, 4, 8, 16], decoder_channels=4, decoder_input_channels=8,
            audio_channels=2, sampling_rate=44100)
        vae.save_pretrained(str(d / "vae"))
        scheduler: Any = diffusers.CosineDPMSolverMultistepScheduler(**PUBLISHED_SCHEDULER)
        scheduler.save_pretrained(str(d / "scheduler"))
        out = {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
               if p.is_file() and not p.relative_to(d).as_posix().startswith("spiece/")}
    out["model_index.json"] = json.dumps(MODEL_INDEX, indent=2).encode()
    return out


def write_tiny_sao1(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny model as a local folder in the published layout; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in sao1_files(seed).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def write_sao1_hub(hf_home: str | Path, seed: int = 0) -> Path:
    """Write the tiny model as the cached snapshot of ``stabilityai/stable-audio-open-1.0``
    under ``<hf_home>/hub`` (with the files the engine never reads); returns ``hf_home``."""
    hf_home = Path(hf_home)
    files = sao1_files(seed)
    for name in UNREAD_FILES:
        files[name] = f"placeholder for {name}: never read by the diffusers engine\n".encode() * 64
    write_repo(hf_home / "hub", SAO_1_REPO, files)
    return hf_home
