"""Generator stage, Stable Audio Open Small: the state-dict layout stable-audio-tools writes.

Input: a ``SmallConfig``. Output: every key of ``model.ckpt``'s ``state_dict`` that the model
needs, with its shape, named as stable-audio-tools' modules name them
(``ConditionedDiffusionModelWrapper`` -> ``model.model`` = ``DiffusionTransformer``,
``conditioner.conditioners.<id>``, ``pretransform.model.{encoder,decoder}`` = Oobleck with
``torch.nn.utils.weight_norm``). Written from stable-audio-tools' ``models/`` (dit.py,
transformer.py, conditioners.py, adp.py, autoencoders.py, blocks.py); checked key for key and
shape for shape against a model that stable-audio-tools itself built from the tiny config. No
torch here.
"""

from __future__ import annotations

from .config import SmallConfig

Shapes = dict[str, tuple[int, ...]]

DIT = "model.model."
SECONDS = "conditioner.conditioners.seconds_total.embedder.embedding."
PROMPT_PROJ = "conditioner.conditioners.prompt.proj_out."
ENCODER = "pretransform.model.encoder."
DECODER = "pretransform.model.decoder."
TIMESTEP_FEATURES = 256  # dit.py: timestep_features_dim
NUMBER_FEATURES = 256  # adp.py: NumberEmbedder(dim=256)
T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "google/flan-t5-base": 768,
           "google/flan-t5-large": 1024}


def cond_embed_dim(cfg: SmallConfig) -> int:
    return cfg.embed_dim if cfg.project_cond_tokens else cfg.cond_token_dim


def rotary_dim(cfg: SmallConfig) -> int:
    """transformer.py: ``RotaryEmbedding(max(dim_heads // 2, 32))``."""
    return max(cfg.head_dim // 2, 32)


def dit_shapes(cfg: SmallConfig) -> Shapes:
    e, c, hd = cfg.embed_dim, cfg.latent_dim, cfg.head_dim
    ce = cond_embed_dim(cfg)
    ge = cfg.embed_dim if cfg.project_global_cond else cfg.global_cond_dim
    s: Shapes = {
        "timestep_features.weight": (TIMESTEP_FEATURES // 2, 1),
        "to_timestep_embed.0.weight": (e, TIMESTEP_FEATURES), "to_timestep_embed.0.bias": (e,),
        "to_timestep_embed.2.weight": (e, e), "to_timestep_embed.2.bias": (e,),
        "to_cond_embed.0.weight": (ce, cfg.cond_token_dim), "to_cond_embed.2.weight": (ce, ce),
        "to_global_embed.0.weight": (ge, cfg.global_cond_dim),
        "to_global_embed.2.weight": (ge, ge),
        "preprocess_conv.weight": (c, c, 1), "postprocess_conv.weight": (c, c, 1),
        "transformer.project_in.weight": (e, c), "transformer.project_out.weight": (c, e),
        "transformer.rotary_pos_emb.inv_freq": (rotary_dim(cfg) // 2,),
    }
    for i in range(cfg.depth):
        p = f"transformer.layers.{i}."
        for norm in ("pre_norm", "cross_attend_norm", "ff_norm"):
            s[p + norm + ".gamma"] = (e,)
            s[p + norm + ".beta"] = (e,)  # a registered buffer: LayerNorm(bias=False)
        s[p + "self_attn.to_qkv.weight"] = (3 * e, e)
        s[p + "self_attn.to_out.weight"] = (e, e)
        s[p + "cross_attn.to_q.weight"] = (e, e)
        s[p + "cross_attn.to_kv.weight"] = (2 * ce, ce)
        s[p + "cross_attn.to_out.weight"] = (e, e)
        if cfg.qk_norm == "ln":
            for attn in ("self_attn", "cross_attn"):
                for qk in ("q_norm", "k_norm"):
                    s[f"{p}{attn}.{qk}.weight"] = (hd,)
                    s[f"{p}{attn}.{qk}.bias"] = (hd,)
        s[p + "ff.ff.0.proj.weight"] = (8 * e, e)  # SwiGLU: mult 4, value and gate
        s[p + "ff.ff.0.proj.bias"] = (8 * e,)
        s[p + "ff.ff.2.weight"] = (e, 4 * e)
        s[p + "ff.ff.2.bias"] = (e,)
    return {DIT + k: v for k, v in s.items()}


def conditioner_shapes(cfg: SmallConfig) -> Shapes:
    s: Shapes = {
        SECONDS + "0.weights": (NUMBER_FEATURES // 2,),
        SECONDS + "1.weight": (cfg.cond_dim, NUMBER_FEATURES + 1),
        SECONDS + "1.bias": (cfg.cond_dim,),
    }
    t5_dim = T5_DIMS.get(cfg.t5_name, cfg.cond_dim)
    if t5_dim != cfg.cond_dim:  # conditioners.py: proj_out only where the widths differ
        s[PROMPT_PROJ + "weight"] = (cfg.cond_dim, t5_dim)
        s[PROMPT_PROJ + "bias"] = (cfg.cond_dim,)
    return s


def _wn_conv(s: Shapes, key: str, cin: int, cout: int, k: int, bias: bool = True,
             transposed: bool = False) -> None:
    if transposed:  # weight_norm(dim=0) on ConvTranspose1d's (in, out, k) weight
        s[key + ".weight_g"] = (cin, 1, 1)
        s[key + ".weight_v"] = (cin, cout, k)
    else:
        s[key + ".weight_g"] = (cout, 1, 1)
        s[key + ".weight_v"] = (cout, cin, k)
    if bias:
        s[key + ".bias"] = (cout,)


def _snake(s: Shapes, key: str, ch: int) -> None:
    s[key + ".alpha"] = (ch,)
    s[key + ".beta"] = (ch,)


def _res_unit(s: Shapes, key: str, ch: int) -> None:
    _snake(s, key + ".layers.0", ch)
    _wn_conv(s, key + ".layers.1", ch, ch, 7)
    _snake(s, key + ".layers.2", ch)
    _wn_conv(s, key + ".layers.3", ch, ch, 1)


def autoencoder_shapes(cfg: SmallConfig, encoder_latent_dim: int | None = None) -> Shapes:
    ch, strides, a = cfg.ae_channels, cfg.ae_strides, cfg.audio_channels
    mults = (1, *cfg.ae_c_mults)
    depth = len(mults)
    s: Shapes = {}
    _wn_conv(s, ENCODER + "layers.0", a, mults[0] * ch, 7)
    for i in range(depth - 1):
        cin, cout = mults[i] * ch, mults[i + 1] * ch
        b = f"{ENCODER}layers.{i + 1}.layers"
        for r in range(3):
            _res_unit(s, f"{b}.{r}", cin)
        _snake(s, f"{b}.3", cin)
        _wn_conv(s, f"{b}.4", cin, cout, 2 * strides[i])
    _snake(s, f"{ENCODER}layers.{depth}", mults[-1] * ch)
    _wn_conv(s, f"{ENCODER}layers.{depth + 1}", mults[-1] * ch,
             encoder_latent_dim or 2 * cfg.latent_dim, 3)
    s.update(decoder_shapes(cfg))
    return s


def decoder_shapes(cfg: SmallConfig) -> Shapes:
    ch, strides, a = cfg.ae_channels, cfg.ae_strides, cfg.audio_channels
    mults = (1, *cfg.ae_c_mults)
    depth = len(mults)
    s: Shapes = {}
    _wn_conv(s, DECODER + "layers.0", cfg.latent_dim, mults[-1] * ch, 7)
    for n, i in enumerate(range(depth - 1, 0, -1)):
        cin, cout = mults[i] * ch, mults[i - 1] * ch
        b = f"{DECODER}layers.{n + 1}.layers"
        _snake(s, f"{b}.0", cin)
        _wn_conv(s, f"{b}.1", cin, cout, 2 * strides[i - 1], transposed=True)
        for r in range(3):
            _res_unit(s, f"{b}.{r + 2}", cout)
    _snake(s, f"{DECODER}layers.{depth}", mults[0] * ch)
    _wn_conv(s, f"{DECODER}layers.{depth + 1}", mults[0] * ch, a, 7, bias=False)
    return s


def state_shapes(cfg: SmallConfig) -> Shapes:
    """Every key and shape of a stable-audio-tools Small checkpoint's ``state_dict``."""
    return {**dit_shapes(cfg), **conditioner_shapes(cfg), **autoencoder_shapes(cfg)}
