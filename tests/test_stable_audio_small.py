"""Stable Audio Open Small through its real loader, on a tiny replica in the published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from soundscape.errors import ModelNotFoundError  # noqa: E402
from soundscape.generate.models import cached_snapshot, text_encoder_dir  # noqa: E402
from soundscape.generate.precision import cpu_has_native_bf16  # noqa: E402
from soundscape.generate.stable_audio_small import sample as S  # noqa: E402
from soundscape.generate.stable_audio_small.config import (  # noqa: E402
    CKPT_FILE,
    CONFIG_FILE,
    parse_config,
)
from soundscape.generate.stable_audio_small.model import load_small  # noqa: E402
from soundscape.generate.stable_audio_small.sat_layout import state_shapes  # noqa: E402
from soundscape.generate.stable_audio_small.tiny import (  # noqa: E402
    SMALL_REPO,
    write_small_hub_replica,
    write_tiny_small,
)

SR = 44100
# A row's latents in a batch differ from the same row alone at float rounding (2.7e-6 on
# latents of about 1, 1.7e-8 on audio here): oneDNN picks GEMM blocking by batch size, so the
# reductions run in another order. Takes are checked equal within this fraction of their peak.
BATCH_RTOL = 1e-4


def assert_same_take(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) <= BATCH_RTOL * float(np.abs(b).max())
PROMPTS = ["rain", "a dog barking twice in the distance near a slow river, then silence",
           "wind in tall grass with crickets"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("hf")
    write_small_hub_replica(home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        snap = cached_snapshot(SMALL_REPO, (CONFIG_FILE, CKPT_FILE))
        assert snap is not None
        t5 = text_encoder_dir("t5-base")
        assert t5 is not None
        yield snap, t5


@pytest.fixture(scope="module")
def model(replica):
    snap, _ = replica
    return load_small(snap)  # T5 found in the HF cache by the helper, as users hit it


def test_replica_has_the_published_layout_and_loads(replica, model) -> None:
    snap, _ = replica
    raw = json.loads((snap / CONFIG_FILE).read_text())
    assert raw["model"]["diffusion"]["diffusion_objective"] == "rf_denoiser"
    assert [c["id"] for c in raw["model"]["conditioning"]["configs"]] == ["prompt",
                                                                          "seconds_total"]
    ckpt = torch.load(snap / CKPT_FILE, weights_only=True)
    assert list(ckpt) == ["state_dict"]
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert shapes == state_shapes(parse_config(raw))
    assert model.sample_rate == SR and model.config.downsampling_ratio == 2048


@pytest.mark.parametrize("duration_s", [0.01, 0.37, 1.0, 2048 / SR * 3, 2.5])
def test_exact_frame_count(model, duration_s: float) -> None:
    (take,) = S.generate_small(model, ["rain on a tin roof"], [duration_s], [3], steps=2)
    assert take.dtype == np.float32
    assert take.shape == (2, round(duration_s * SR))
    assert np.isfinite(take).all() and float(np.sqrt(np.mean(take ** 2))) > 1e-4


def test_same_seed_same_take_other_seed_differs(model) -> None:
    a, b, c = S.generate_small(model, ["rain"] * 3, [0.5] * 3, [11, 11, 12], steps=3)
    assert_same_take(a, b)
    (again,) = S.generate_small(model, ["rain"], [0.5], [11], steps=3)
    (alone,) = S.generate_small(model, ["rain"], [0.5], [11], steps=3)
    np.testing.assert_array_equal(again, alone)  # alone, bit for bit
    assert float(np.abs(a - c).max()) > 0.1 * float(np.abs(a).max())


def test_batched_equals_alone(model) -> None:
    """Prompts of different token lengths and durations in one call give each take exactly
    what it gives alone."""
    durations = [1.0, 1.0, 0.6]
    seeds = [5, 6, 7]
    batched = S.generate_small(model, PROMPTS, durations, seeds, steps=3)
    for i in range(3):
        (alone,) = S.generate_small(model, [PROMPTS[i]], [durations[i]], [seeds[i]], steps=3)
        assert_same_take(batched[i], alone)


def test_short_take_is_the_models_own_output_for_that_length(model) -> None:
    """A 0.3 s take denoises ceil(frames / 2048) latents with seconds_total = 0.3 and crops the
    decode to the frame count; nothing of a longer window is involved."""
    d, seed = 0.3, 9
    frames = round(d * SR)
    (take,) = S.generate_small(model, ["footstep"], [d], [seed], steps=4)
    length = S.latent_length(model, frames)
    assert length == 7
    cross, glob = S.conditioning(model, S.encode_text(model, ["footstep"]), [d])
    lat = S.denoise(model, [torch.Generator().manual_seed(seed)], length, cross, glob, 4, 1.0,
                    None, "fp32")
    own = S.decode(model, lat, chunk=None)[0].numpy()
    assert own.shape == (2, length * 2048)
    np.testing.assert_array_equal(take, own[:, :frames])
    # the same seed asked for 11 s is another take: the length is conditioned, not cropped
    (long,) = S.generate_small(model, ["footstep"], [11.0], [seed], steps=4)
    assert float(np.abs(long[:, :frames] - take).max()) > 1e-3 * float(np.abs(take).max())


class _Counter:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, module, args, output) -> None:
        self.batches.append(int(args[0].shape[0]))


@pytest.mark.parametrize("cfg_coef,rows_per_take", [(1.0, 1), (3.0, 2)])
def test_guidance_forwards(model, cfg_coef: float, rows_per_take: int) -> None:
    counter = _Counter()
    handle = model.dit.register_forward_hook(counter)
    try:
        S.generate_small(model, PROMPTS[:2], [0.5, 0.5], [1, 2], steps=5, cfg_coef=cfg_coef)
    finally:
        handle.remove()
    assert counter.batches == [2 * rows_per_take] * 5


def test_negative_prompt_changes_guided_take_only(model) -> None:
    plain = S.generate_small(model, ["rain"], [0.5], [4], steps=3, cfg_coef=3.0)[0]
    neg = S.generate_small(model, ["rain"], [0.5], [4], steps=3, cfg_coef=3.0,
                           negative_prompts=["thunder and wind"])[0]
    assert float(np.abs(plain - neg).max()) > 0
    one = S.generate_small(model, ["rain"], [0.5], [4], steps=3)[0]
    one_neg = S.generate_small(model, ["rain"], [0.5], [4], steps=3,
                               negative_prompts=["thunder and wind"])[0]
    np.testing.assert_array_equal(one, one_neg)  # cfg 1: no unconditional pass to steer


def test_chunked_decode_equals_whole(model) -> None:
    z = torch.randn(2, model.config.latent_dim, 150, generator=torch.Generator().manual_seed(0))
    whole = S.decode(model, z, chunk=None)
    chunked = S.decode(model, z, chunk=32, overlap=S.DECODE_OVERLAP_LATENTS)
    assert chunked.shape == whole.shape == (2, 2, 150 * 2048)
    peak = float(whole.abs().max())
    assert float((chunked - whole).abs().max()) <= 1e-5 * peak


def test_bf16_error_is_measured_and_small(model) -> None:
    err = S.bf16_error(model, duration_s=0.5, steps=3)
    assert 0 < err["audio_rel_rms_error"] < 0.1
    if cpu_has_native_bf16():  # the channels-last decoder runs at bf16
        assert 0 < err["decoder_rel_rms_error"] < 0.03
    else:  # elsewhere the decoder stays fp32
        assert err["decoder_rel_rms_error"] == 0


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_channels_last_decoder_computes_diffusers_decoder(model, dtype, rel: float) -> None:
    """The channels-last decoder is diffusers' function: equal to float rounding at fp32 (so
    every stride, padding and dilation is carried over), within bf16 rounding at bf16."""
    from soundscape.generate.stable_audio_small.oobleck import ChannelsLastDecoder

    z = torch.randn(1, model.config.latent_dim, 9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.decoder(z)
    out = ChannelsLastDecoder(model.decoder, dtype)(z)
    assert out.dtype == dtype and out.shape == ref.shape == (1, 2, 9 * 2048)
    err = float((out.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert err <= rel
    if dtype == torch.bfloat16:
        assert err > 1e-5  # it did run at bf16


def test_bf16_dit_copy_computes_what_autocast_computes(model) -> None:
    """The DiT copy with bf16 Linear weights gives autocast's result bit for bit, and the
    fp32 DiT keeps its fp32 weights."""
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, cfg.latent_dim, 11, generator=g)
    cross, glob = S.conditioning(model, S.encode_text(model, PROMPTS[:2]), [1.0, 0.5])
    t = torch.tensor([0.7, 0.3])
    fast = S.cpu_bf16_dit(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model.dit(x, t, *model.dit.project_cond(cross, glob))
        out = fast(x, t, *fast.project_cond(cross, glob))
    assert torch.equal(out, ref)
    assert model.dit.transformer.project_in.weight.dtype == torch.float32
    assert fast.transformer.project_in.weight.dtype == torch.bfloat16


def test_fp32_take_builds_no_bf16_copies(replica) -> None:
    fresh = load_small(*replica)
    S.generate_small(fresh, ["rain"], [0.2], [1], steps=2)
    assert fresh.derived == {}
    S.generate_small(fresh, ["rain"], [0.2], [1], steps=2, precision="bf16")
    assert "cpu_bf16_dit" in fresh.derived
    assert ("cpu_decoder" in fresh.derived) == cpu_has_native_bf16()


def test_bf16_decoder_falls_back_to_fp32_without_native_bf16(model, monkeypatch) -> None:
    """Where the CPU lacks native bf16 a bf16 take decodes in fp32 (emulated bf16 convolutions
    are slower than fp32 ones), so its decoder adds no error."""
    monkeypatch.setattr("soundscape.generate.precision.cpu_has_native_bf16", lambda: False)
    assert not S.fast_cpu_decode(model, "bf16")
    err = S.bf16_error(model, duration_s=0.3, steps=2)
    assert err["decoder_rel_rms_error"] == 0


def _copy_replica(snap: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in (CONFIG_FILE, CKPT_FILE):
        (dst / f).write_bytes((snap / f).read_bytes())
    return dst


def test_checkpoint_missing_keys_is_one_clear_error(replica, tmp_path: Path) -> None:
    snap, t5 = replica
    d = _copy_replica(snap, tmp_path / "m")
    ckpt = torch.load(d / CKPT_FILE, weights_only=True)
    del ckpt["state_dict"]["model.model.transformer.layers.1.cross_attn.to_kv.weight"]
    ckpt["state_dict"]["model.model.to_cond_embed.0.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, d / CKPT_FILE)
    with pytest.raises(ModelNotFoundError) as e:
        load_small(d, t5)
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.model.transformer.layers.1.cross_attn.to_kv.weight" in msg
    assert "model.model.to_cond_embed.0.weight is (3, 3), expected (128, 768)" in msg


def test_config_of_another_model_is_one_clear_error(replica, tmp_path: Path) -> None:
    snap, t5 = replica
    d = _copy_replica(snap, tmp_path / "m")
    raw = json.loads((d / CONFIG_FILE).read_text())
    raw["model"]["diffusion"]["config"]["depth"] = 3
    (d / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelNotFoundError, match=r"lacks 23 keys the config needs "
                                                 r"\(model\.model\.transformer\.layers\.2\."):
        load_small(d, t5)
    raw["model"]["diffusion"]["diffusion_objective"] = "v"
    (d / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelNotFoundError, match="diffusion_objective is 'v'"):
        load_small(d, t5)


def test_corrupt_or_missing_files_are_one_clear_error(replica, tmp_path: Path) -> None:
    snap, t5 = replica
    d = _copy_replica(snap, tmp_path / "m")
    data = (d / CKPT_FILE).read_bytes()
    (d / CKPT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError, match="not a readable PyTorch checkpoint"):
        load_small(d, t5)
    (d / CKPT_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match=f"lacks {CKPT_FILE}"):
        load_small(d, t5)


def test_write_tiny_small_writes_the_two_published_files(tmp_path: Path, replica) -> None:
    _, t5 = replica
    d = write_tiny_small(tmp_path / "tiny", seed=1)
    assert sorted(p.name for p in d.iterdir()) == [CKPT_FILE, CONFIG_FILE]
    m = load_small(d, t5)
    (take,) = S.generate_small(m, ["x"], [0.2], [0], steps=2)
    assert take.shape == (2, round(0.2 * SR))


def test_seconds_total_says_the_takes_length(model) -> None:
    """A 0.3 s take is conditioned on seconds_total = 0.3, not on the model's 11.9 s window."""
    (take,) = S.generate_small(model, ["door"], [0.3], [2], steps=3)
    states = S.encode_text(model, ["door"])
    own = {}
    for secs in (0.3, model.config.max_duration_s):
        cross, glob = S.conditioning(model, states, [secs])
        lat = S.denoise(model, [torch.Generator().manual_seed(2)], 7, cross, glob, 3, 1.0, None,
                        "fp32")
        own[secs] = S.decode(model, lat, chunk=None)[0, :, :take.shape[1]].numpy()
    np.testing.assert_array_equal(take, own[0.3])
    assert float(np.abs(take - own[model.config.max_duration_s]).max()) > 1e-3 * float(
        np.abs(take).max())


def test_config_and_layout_import_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; import soundscape.generate.stable_audio_small.config, "
            "soundscape.generate.stable_audio_small.sat_layout; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
