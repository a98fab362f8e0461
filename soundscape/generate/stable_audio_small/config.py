"""Generator stage, Stable Audio Open Small: read model_config.json (stable-audio-tools).

Input: the parsed JSON of a ``diffusion_cond`` model as published in
``stabilityai/stable-audio-open-small``. Output: a frozen ``SmallConfig`` with the few numbers the
loader and the sampler need. No torch here. Anything this engine cannot run (another diffusion
objective, an adaLN DiT, another pretransform) is one ``ModelNotFoundError`` line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ModelNotFoundError

CONFIG_FILE = "model_config.json"
CKPT_FILE = "model.ckpt"


@dataclass(frozen=True)
class SmallConfig:
    """The shapes of a Stable Audio Open Small model (stable-audio-tools' names in comments)."""

    sample_rate: int
    audio_channels: int
    sample_size: int  # the training window in frames (524288 = 11.9 s for Small)
    latent_dim: int  # model.io_channels
    downsampling_ratio: int  # pretransform frames per latent
    pretransform_scale: float
    ae_channels: int  # decoder.config.channels
    ae_c_mults: tuple[int, ...]
    ae_strides: tuple[int, ...]  # encoder order; the decoder runs them reversed
    t5_name: str
    t5_max_length: int
    cond_dim: int  # conditioning.cond_dim: width of every conditioner's output
    seconds_min: float
    seconds_max: float
    cross_attn_ids: tuple[str, ...]
    global_ids: tuple[str, ...]
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: int
    project_cond_tokens: bool
    project_global_cond: bool
    qk_norm: str
    objective: str

    @property
    def max_duration_s(self) -> float:
        return self.sample_size / self.sample_rate

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def _get(d: Any, path: str, where: str) -> Any:
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ModelNotFoundError(f"{where}: '{path}' is missing; this is not Stable Audio Open "
                                     f"Small's model_config.json layout")
        cur = cur[part]
    return cur


def _require(ok: bool, where: str, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ModelNotFoundError(f"{where}: {path} is {value!r}; this engine runs {allowed}")


def parse_config(raw: dict[str, Any], where: str = CONFIG_FILE) -> SmallConfig:
    """The ``SmallConfig`` of a parsed ``model_config.json``.

    Raises:
        ModelNotFoundError: a missing key, or a model this engine cannot run.
    """
    _require(raw.get("model_type") == "diffusion_cond", where, "model_type",
             raw.get("model_type"), "'diffusion_cond' models")
    pre = _get(raw, "model.pretransform", where)
    _require(pre.get("type") == "autoencoder", where, "model.pretransform.type", pre.get("type"),
             "an 'autoencoder' pretransform")
    dec = _get(pre, "config.decoder", where)
    _require(dec.get("type") == "oobleck", where, "model.pretransform.config.decoder.type",
             dec.get("type"), "the 'oobleck' decoder")
    dcfg = dec.get("config", {})
    _require(not dcfg.get("final_tanh", False) and dcfg.get("use_snake", False), where,
             "model.pretransform.config.decoder.config", dcfg,
             "Oobleck with snake and no final tanh")
    conds = {c["id"]: c for c in _get(raw, "model.conditioning.configs", where)}
    prompt = conds.get("prompt")
    _require(prompt is not None and prompt.get("type") == "t5", where,
             "model.conditioning.configs[prompt]", prompt, "a 't5' prompt conditioner")
    assert prompt is not None
    seconds = conds.get("seconds_total")
    _require(seconds is not None and seconds.get("type") == "number", where,
             "model.conditioning.configs[seconds_total]", seconds,
             "a 'number' seconds_total conditioner")
    assert seconds is not None
    extra = sorted(set(conds) - {"prompt", "seconds_total"})
    _require(not extra, where, "model.conditioning.configs", extra,
             "prompt and seconds_total only (Small has no seconds_start)")
    diff = _get(raw, "model.diffusion", where)
    _require(diff.get("type") == "dit", where, "model.diffusion.type", diff.get("type"), "a 'dit'")
    objective = diff.get("diffusion_objective", "v")
    _require(objective in ("rf_denoiser", "rectified_flow"), where,
             "model.diffusion.diffusion_objective", objective,
             "rectified flow ('rf_denoiser' or 'rectified_flow')")
    dit = _get(diff, "config", where)
    for key, default, allowed in (("transformer_type", "continuous_transformer",
                                   "continuous_transformer"),
                                  ("global_cond_type", "prepend", "prepend"),
                                  ("timestep_cond_type", "global", "global"),
                                  ("patch_size", 1, 1), ("input_concat_dim", 0, 0),
                                  ("prepend_cond_dim", 0, 0)):
        value = dit.get(key, default)
        _require(value == allowed, where, f"model.diffusion.config.{key}", value, repr(allowed))
    attn = dit.get("attn_kwargs", {}) or {}
    qk_norm = attn.get("qk_norm", "none")
    _require(qk_norm in ("ln", "none") and set(attn) <= {"qk_norm"}, where,
             "model.diffusion.config.attn_kwargs", attn, "qk_norm 'ln' or 'none'")
    _require(set(diff.get("global_cond_ids", [])) <= {"seconds_total"}, where,
             "model.diffusion.global_cond_ids", diff.get("global_cond_ids"), "seconds_total")
    scfg = seconds.get("config", {})
    return SmallConfig(
        sample_rate=int(_get(raw, "sample_rate", where)),
        audio_channels=int(raw.get("audio_channels", 2)),
        sample_size=int(_get(raw, "sample_size", where)),
        latent_dim=int(_get(raw, "model.io_channels", where)),
        downsampling_ratio=int(_get(pre, "config.downsampling_ratio", where)),
        pretransform_scale=float(pre.get("scale", 1.0)),
        ae_channels=int(dcfg["channels"]),
        ae_c_mults=tuple(int(c) for c in dcfg["c_mults"]),
        ae_strides=tuple(int(s) for s in dcfg["strides"]),
        t5_name=str(prompt.get("config", {}).get("t5_model_name", "t5-base")),
        t5_max_length=int(prompt.get("config", {}).get("max_length", 128)),
        cond_dim=int(_get(raw, "model.conditioning.cond_dim", where)),
        seconds_min=float(scfg.get("min_val", 0)),
        seconds_max=float(scfg.get("max_val", 1)),
        cross_attn_ids=tuple(diff.get("cross_attention_cond_ids", [])),
        global_ids=tuple(diff.get("global_cond_ids", [])),
        embed_dim=int(dit.get("embed_dim", 768)),
        depth=int(dit.get("depth", 12)),
        num_heads=int(dit.get("num_heads", 8)),
        cond_token_dim=int(dit.get("cond_token_dim", 0)),
        global_cond_dim=int(dit.get("global_cond_dim", 0)),
        project_cond_tokens=bool(dit.get("project_cond_tokens", True)),
        project_global_cond=bool(dit.get("project_global_cond", True)),
        qk_norm=qk_norm,
        objective=objective,
    )


def published_config(tiny: bool = False) -> dict[str, Any]:
    """``model_config.json`` as published for stable-audio-open-small (``tiny``: same keys and
    structure, tiny widths, for the test replica)."""
    strides = [2, 4, 4, 8, 8]  # 2048 frames a latent, as published
    ch, mults = (4, [1, 2, 2, 2, 2]) if tiny else (128, [1, 2, 4, 8, 16])
    ratio = 1
    for s in strides:
        ratio *= s
    cond_dim = 768  # T5-base's width: stable-audio-tools reads it from the name, so tiny too
    latent = 8 if tiny else 64
    encoder = {"in_channels": 2, "channels": ch, "c_mults": mults, "strides": strides,
               "latent_dim": latent * 2, "use_snake": True}
    decoder = {"out_channels": 2, "channels": ch, "c_mults": mults, "strides": strides,
               "latent_dim": latent, "use_snake": True, "final_tanh": False}
    return {
        "model_type": "diffusion_cond",
        "sample_size": 524288,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "model_half": True,
                "config": {
                    "encoder": {"type": "oobleck", "config": encoder},
                    "decoder": {"type": "oobleck", "config": decoder},
                    "bottleneck": {"type": "vae"},
                    "latent_dim": latent,
                    "downsampling_ratio": ratio,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "configs": [
                    {"id": "prompt", "type": "t5",
                     "config": {"t5_model_name": "t5-base", "max_length": 64}},
                    {"id": "seconds_total", "type": "number",
                     "config": {"min_val": 0, "max_val": 256}},
                ],
                "cond_dim": cond_dim,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "diffusion_objective": "rf_denoiser",
                "type": "dit",
                "config": {
                    "io_channels": latent,
                    "embed_dim": 128 if tiny else 1024,  # heads of 64: rotary on half, as Small
                    "depth": 2 if tiny else 16,
                    "num_heads": 2 if tiny else 8,
                    "cond_token_dim": cond_dim,
                    "global_cond_dim": cond_dim,
                    "transformer_type": "continuous_transformer",
                    "attn_kwargs": {"qk_norm": "ln"},
                },
            },
            "io_channels": latent,
        },
        "training": {
            "use_ema": True,
            "log_loss_info": False,
            "optimizer_configs": {"diffusion": {"optimizer": {
                "type": "AdamW", "config": {"lr": 5e-5, "betas": [0.9, 0.999],
                                            "weight_decay": 1e-3}}}},
            "demo": {"demo_every": 2000, "demo_steps": 8, "num_demos": 4,
                     "demo_cond": [{"prompt": "A beautiful piano arpeggio", "seconds_total": 11}],
                     "demo_cfg_scales": [1]},
        },
    }
