"""Generator stage, test support: a tiny offline replica of the published AudioGen on the hub.

Input: a folder to use as ``HF_HOME``. Output: a Hugging Face cache (``<HF_HOME>/hub``) holding
``facebook/audiogen-medium`` and ``t5-large`` laid out as ``hf download`` leaves them (``blobs/``,
``snapshots/<commit>/``, ``refs/main``), with the published files' formats at tiny sizes:

- ``state_dict.bin`` / ``compression_state_dict.bin``: ``xp.cfg`` is a pickled omegaconf
  ``DictConfig`` in struct mode holding a whole training config whose keys mirror audiocraft's
  ``config/`` tree for ``solver=audiogen/audiogen_base_16khz`` (a ``t5`` conditioner named
  ``t5-large``, the delay pattern, the cross-attention fuser, ``memory_efficient``, unresolved
  ``${...}`` references); the LM's weights are float16, as in the published 3.6 GB file.
- ``t5-large``: a random one-layer ``T5EncoderModel`` with ``d_model`` 1024 (audiocraft requires
  that width for this name) and a real SentencePiece tokenizer trained here in well under a
  second, so prompts of different lengths tokenize to different lengths. Like the real repository
  it also holds weights in formats transformers does not read (TensorFlow, Flax, Rust, ONNX), as
  small placeholder files, so tests can check that only what transformers reads is downloaded.

The same files are what the hub stand-in in the tests serves. The weights are random: the audio is
noise, through exactly the code path users of the published weights hit.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from pathlib import Path
from typing import Any

from .tiny import TINY_MAX_DURATION_S, tiny_configs

AUDIOGEN_REPO = "facebook/audiogen-medium"
T5_REPO = "t5-large"
T5_DIM = 1024  # audiocraft's T5Conditioner.MODELS_DIMS['t5-large']
T5_EXTRA_IDS = 100  # T5's sentinel tokens, as in the real tokenizer
UNREAD_T5_FILES = ("tf_model.h5", "flax_model.msgpack", "rust_model.ot",
                   "onnx/encoder_model.onnx", "README.md")


def repo_folder(repo_id: str) -> str:
    """The cache folder name of a model repository (``models--org--name``)."""
    return "models--" + repo_id.replace("/", "--")


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    things_text = ("rain thunder wind birds dog cat cup saucer door car engine train footsteps "
              "crowd "
              "cafe water drip crickets owl bell clock fire waves ocean forest leaves keyboard "
              "spaceship alarm siren horn glass bottle river stream market street traffic chain "
              "dungeon torch wolf howl insects frogs choir organ static radio beeps console "
              "machine hum fan ventilation metal creak wood floor stairs whisper laughter")
    how_text = ("soft loud distant close steady gentle heavy light rolling chirping barking "
           "ticking "
           "humming dripping echoing muffled crisp low high slow fast faint rumbling")
    things, how = things_text.split(), how_text.split()
    joins = ("on", "in", "near", "under", "with", "behind", "through", "over")
    return [f"{rng.choice(how)} {rng.choice(things)} {rng.choice(joins)} a {rng.choice(things)}, "
            f"{rng.choice(how)} and {rng.choice(how)}, no {rng.choice(things)}"
            for _ in range(n)]


def _train_spiece(seed: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    # T5's layout: <pad>=0, </s>=1, <unk>=2, no <s>
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(600, seed)), model_writer=model, vocab_size=400,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, minloglevel=2, num_threads=1)
    return model.getvalue()


def t5_files(seed: int = 0) -> dict[str, bytes]:
    """The files of a tiny ``t5-large`` repository, by name."""
    import tempfile

    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "spiece.model").write_bytes(_train_spiece(seed))
        tok = T5Tokenizer.from_pretrained(str(d), extra_ids=T5_EXTRA_IDS)
        tok_dir = d / "tok"
        tok.save_pretrained(str(tok_dir))
        vocab = -(-len(tok) // 64) * 64  # padded to a multiple of 64, as t5-large's 32128
        config = T5Config(vocab_size=vocab, d_model=T5_DIM, d_kv=8, d_ff=32, num_layers=1,
                          num_decoder_layers=1, num_heads=2, feed_forward_proj="relu",
                          architectures=["T5ForConditionalGeneration"])
        torch.manual_seed(seed)
        model = T5EncoderModel(config).eval()
        model_dir = d / "model"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model.save_pretrained(str(model_dir))
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buf)
        out["pytorch_model.bin"] = buf.getvalue()
        out["config.json"] = (model_dir / "config.json").read_bytes()
        out["model.safetensors"] = (model_dir / "model.safetensors").read_bytes()
        out["spiece.model"] = (d / "spiece.model").read_bytes()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            out[f] = (tok_dir / f).read_bytes()
    out["generation_config.json"] = json.dumps({"decoder_start_token_id": 0, "eos_token_id": 1,
                                                "pad_token_id": 0}).encode()
    for f in UNREAD_T5_FILES:  # formats transformers does not read with torch: must not be fetched
        out[f] = f"placeholder for {f}: a download that fetched it took too much\n".encode() * 64
    return out


def _training_root(max_duration_s: float) -> dict[str, Any]:
    """Keys shared by both published configs: audiocraft's config.yaml, solver/default.yaml and
    solver/audiogen/audiogen_base_16khz.yaml, at tiny sizes, references unresolved."""
    return {
        "device": "cuda", "dtype": "float32", "autocast": True, "autocast_dtype": "float16",
        "seed": 2036, "show": False, "continue_from": None, "execute_only": None,
        "execute_inplace": False, "benchmark_no_load": False,
        "efficient_attention_backend": "torch", "num_threads": 1,
        "mp_start_method": "forkserver", "label": None,
        "logging": {"level": "INFO", "log_updates": 10, "log_tensorboard": True,
                    "log_wandb": False},
        "slurm": {"gpus": 4, "mem_per_gpu": 40, "time": 3600, "constraint": None,
                  "partition": None, "comment": None, "setup": [], "exclude": ""},
        "dora": {"dir": "/checkpoint/${oc.env:USER}/experiments/audiocraft/outputs",
                 "exclude": ["device", "wandb.*", "tensorboard.*", "logging.*"],
                 "use_rendezvous": False, "git_save": True},
        "solver": "audiogen", "sample_rate": 16000, "channels": 1,
        "compression_model_checkpoint": "//reference/bd44a852/checkpoint.th",
        "fsdp": {"use": False, "param_dtype": "float16", "reduce_dtype": "float32",
                 "buffer_dtype": "float32", "sharding_strategy": "shard_grad_op",
                 "per_block": True},
        "deadlock": {"use": True, "timeout": 600},
        "dataset": {"batch_size": 128, "num_workers": 10, "segment_duration": max_duration_s,
                    "min_segment_ratio": 1.0, "sample_on_weight": False,
                    "sample_on_duration": False, "external_metadata_source": None,
                    "train": {"batch_size": 256, "aug_p": 0.5, "mix_p": 0.5,
                              "mix_snr_low": -5, "mix_snr_high": 5, "mix_min_overlap": 0.5},
                    "valid": {"num_samples": None}, "generate": {"num_samples": None,
                                                                 "return_info": True}},
        "generate": {"every": None, "path": "samples",
                     "lm": {"use_sampling": True, "temp": 1.0, "top_k": 250, "top_p": 0.0}},
        "optim": {"epochs": 100, "updates_per_epoch": 2000, "lr": 5e-4, "optimizer": "adamw",
                  "max_norm": 1.0, "adam": {"betas": [0.9, 0.95], "weight_decay": 0.1,
                                            "eps": 1e-8},
                  "ema": {"use": True, "updates": "${optim.updates_per_epoch}",
                          "device": "cuda", "decay": 0.99}},
        "schedule": {"lr_scheduler": "inverse_sqrt",
                     "inverse_sqrt": {"warmup": 3000, "warmup_init_lr": 0.0}},
    }


def published_configs(max_duration_s: float = TINY_MAX_DURATION_S) -> tuple[dict, dict]:
    """The (LM, compression) training configs as plain dicts, shaped like the published ones."""
    lm_small, comp_small = tiny_configs(max_duration_s)
    lm = _training_root(max_duration_s)
    tl = lm_small["transformer_lm"]
    lm.update({
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
            "unroll": {"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
            "music_lm": {"group_by": 2}, "coarse_first": {"delays": [0, 0, 0]},
        },
        "transformer_lm": {
            "dim": tl["dim"], "num_heads": tl["num_heads"], "num_layers": tl["num_layers"],
            "hidden_scale": tl["hidden_scale"], "n_q": tl["n_q"],
            "card": tl["card"], "dropout": 0.0, "emb_lr": None, "activation": "gelu",
            "norm_first": True, "bias_ff": False, "bias_attn": False, "bias_proj": False,
            "past_context": None, "causal": True, "custom": False, "memory_efficient": True,
            "attention_as_float32": False, "layer_scale": None, "positional_embedding": "sin",
            "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm",
            "cross_attention": False, "qk_layer_norm": False, "qk_layer_norm_cross": False,
            "attention_dropout": None, "kv_repeat": 1, "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.1, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {
            "name": T5_REPO, "finetune": False, "word_dropout": 0.0, "normalize_text": False}}},
        "tokens": {"padding_with_special_token": False},
    })
    comp = _training_root(max_duration_s)
    comp["solver"] = "compression"
    seanet = comp_small["seanet"]
    comp.update({
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": "${sample_rate}",
                    "channels": "${channels}", "causal": False, "renormalize": False},
        "seanet": {"dimension": seanet["dimension"], "channels": "${channels}",
                   "causal": "${encodec.causal}", "n_filters": seanet["n_filters"],
                   "n_residual_layers": 1, "ratios": [8, 5, 4, 2], "activation": "ELU",
                   "activation_params": {"alpha": 1.0}, "norm": "weight_norm",
                   "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
                   "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant",
                   "true_skip": True, "compress": 2, "lstm": 2, "disable_norm_outer_blocks": 0,
                   "decoder": {"trim_right_ratio": 1.0, "final_activation": None,
                               "final_activation_params": None},
                   "encoder": {}},
        "rvq": {"n_q": comp_small["rvq"]["n_q"], "q_dropout": False,
                "bins": comp_small["rvq"]["bins"], "decay": 0.99, "kmeans_init": False,
                "kmeans_iters": 50, "threshold_ema_dead_code": 2, "orthogonal_reg_weight": 0.0,
                "orthogonal_reg_active_codes_only": False},
        "no_quant": {},
    })
    return lm, comp


def audiogen_files(seed: int = 0, max_duration_s: float = TINY_MAX_DURATION_S
                   ) -> dict[str, bytes]:
    """The two checkpoint files of a tiny ``facebook/audiogen-medium``, pickled as published."""
    from .. import quiet_xformers

    quiet_xformers()
    import torch
    from audiocraft import __version__ as audiocraft_version
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    lm_cfg, comp_cfg = published_configs(max_duration_s)
    out: dict[str, bytes] = {}
    torch.manual_seed(seed)
    built_comp = OmegaConf.create(comp_cfg)
    built_comp.device = "cpu"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        compression = builders.get_compression_model(built_comp)
    built_lm = OmegaConf.create(lm_cfg)
    built_lm.device = "cpu"
    # The LM is built with audiocraft's lookup-table conditioner of T5's width, so building the
    # replica needs no T5; the state dict is the same (T5's own weights are never in it).
    built_lm.conditioners.description = {"model": "lut", "lut": {
        "n_bins": 256, "dim": T5_DIM, "tokenizer": "noop"}}
    lm = builders.get_lm_model(built_lm)
    with torch.no_grad():
        for p in lm.parameters():  # a useful output level from random weights, as tiny.py does
            p.mul_(4.0)
    lm_state = {k: v.detach().to(torch.float16) for k, v in lm.state_dict().items()
                if not k.startswith("condition_provider.conditioners.description.embed")}
    for name, state, cfg in (("state_dict.bin", lm_state, lm_cfg),
                             ("compression_state_dict.bin", compression.state_dict(), comp_cfg)):
        xp_cfg = OmegaConf.create(cfg)
        OmegaConf.set_struct(xp_cfg, True)
        buf = io.BytesIO()
        torch.save({"best_state": {k: v.detach().cpu().contiguous() for k, v in state.items()},
                    "xp.cfg": xp_cfg, "version": audiocraft_version, "exported": True}, buf)
        out[name] = buf.getvalue()
    return out


def _is_lfs(name: str, data: bytes) -> bool:
    return len(data) > 10_000 or name.endswith((".bin", ".safetensors", ".model", ".h5", ".ot",
                                                ".msgpack", ".onnx"))


def blob_etag(name: str, data: bytes) -> str:
    """The hub's ETag of a file: SHA-256 for LFS files, git's blob SHA-1 otherwise."""
    if _is_lfs(name, data):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_repo(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Write ``files`` as the cached snapshot of ``repo_id``; returns its commit hash."""
    commit = hashlib.sha1(json.dumps(sorted((n, blob_etag(n, d)) for n, d in files.items()))
                          .encode()).hexdigest()
    root = hub_cache / repo_folder(repo_id)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for name, data in files.items():
        etag = blob_etag(name, data)
        (root / "blobs" / etag).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        target = Path("../" * (len(Path(name).parts) + 1)) / "blobs" / etag
        try:
            link.symlink_to(target)
        except OSError:  # no symlinks (Windows without developer mode): a copy, as hf does
            link.write_bytes(data)
    (root / "refs" / "main").write_text(commit)
    return commit


def write_hub_replica(hf_home: str | Path, seed: int = 0,
                      max_duration_s: float = TINY_MAX_DURATION_S,
                      t5_unread_files: bool = True) -> Path:
    """Write the replica under ``<hf_home>/hub`` and return ``hf_home``.

    Args:
        hf_home: the folder to point ``HF_HOME`` at; created if missing.
        seed: torch seed for the random weights and the tokenizer's training text.
        max_duration_s: AudioGen's generation window (``dataset.segment_duration``).
        t5_unread_files: also write the placeholder TF/Flax/Rust/ONNX files (as the real
            repository holds them).
    """
    hf_home = Path(hf_home)
    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    write_repo(hub, AUDIOGEN_REPO, audiogen_files(seed, max_duration_s))
    t5 = t5_files(seed)
    if not t5_unread_files:
        t5 = {k: v for k, v in t5.items() if k not in UNREAD_T5_FILES}
    write_repo(hub, T5_REPO, t5)
    return hf_home
