"""Stable Audio Open 1.0 through its published diffusers layout, replicated offline: the engine's
own denoising loop against diffusers' pipeline, seeds alone and batched, chunked decoding, one
guided forward per step, and the hub paths (gated repository, token, first download, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soundscape.generate.dev.replica import repo_folder
from soundscape.generate.dev.sa_replica import SAO_1_REPO, UNREAD_FILES, write_sao1_hub
from tests.conftest import env_without_pytest, manifest, run_cli
from tests.hubstub import HubStub

torch = pytest.importorskip("torch")

SCENE = """\
name: bells
duration: 3 s
sample_rate: 48 kHz
model: stable-audio-open-1.0
defaults: {{duration: 1 s, steps: 6}}
elements:
  bell: {{prompt: a small brass bell, at: 1 s, volume: -3 dB}}
master: {{loudness: -20 LUFS}}
"""


@pytest.fixture(scope="session")
def sao1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundscape.generate.dev.sa_replica import write_tiny_sao1

    torch.set_num_threads(1)
    return write_tiny_sao1(tmp_path_factory.mktemp("sao1") / "model")


@pytest.fixture(scope="session")
def sao1_model(sao1_dir: Path):  # type: ignore[no-untyped-def]
    from soundscape.generate.stable_audio import load_sao1

    return load_sao1(sao1_dir, "cpu", "fp32")


@pytest.fixture(scope="session")
def sao1_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``HF_HOME`` holding the tiny replica of stabilityai/stable-audio-open-1.0."""
    return write_sao1_hub(tmp_path_factory.mktemp("sao1_hub"))


def _gen(model, prompts, seeds, seconds=1.0, negatives=None, steps=6, cfg=7.0, **kw):  # type: ignore[no-untyped-def]
    from soundscape.generate.stable_audio import generate

    return generate(model, list(prompts), negatives or [None] * len(prompts), seconds,
                    list(seeds), steps, cfg, **kw)


# --- the loop: what diffusers' pipeline makes for a window of the take's length ----------------

@pytest.mark.parametrize("seconds", [0.7, 1.0, 2.3])
def test_a_short_take_is_the_pipelines_own_output_for_that_length(  # type: ignore[no-untyped-def]
        sao1_model, seconds: float) -> None:
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

    from soundscape.generate.stable_audio import latent_length

    m = sao1_model
    length = latent_length(m, seconds)
    frames = round(seconds * 44100)
    assert length == -(-frames // 2048)  # the latents the take needs, not the 1024 of 47.55 s
    pipe = StableAudioPipeline(vae=m.vae, text_encoder=m.text_encoder,
                               projection_model=m.projection, tokenizer=m.tokenizer,
                               transformer=m.transformer,
                               scheduler=CosineDPMSolverMultistepScheduler.from_config(
                                   m.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    window = m.transformer.config.sample_size
    m.transformer.register_to_config(sample_size=length)  # the pipeline denoises this window
    try:
        stock = pipe("rain on a tin roof", audio_end_in_s=seconds, num_inference_steps=6,
                     guidance_scale=7.0, negative_prompt="music",
                     generator=[torch.Generator().manual_seed(42)], output_type="np").audios[0]
    finally:
        m.transformer.register_to_config(sample_size=window)
    ours = _gen(m, ["rain on a tin roof"], [42], seconds, ["music"])[0]
    assert ours.shape == (2, frames)  # round(seconds * rate); diffusers floors it
    n = stock.shape[1]
    assert n in (frames, frames - 1)
    peak = np.abs(stock).max()
    assert peak > 1e-2
    np.testing.assert_allclose(ours[:, :n], stock, atol=1e-5 * peak)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # stereo, not two copies


def test_the_same_seed_is_the_same_take_alone_or_batched(sao1_model) -> None:  # type: ignore[no-untyped-def]
    m = sao1_model
    short, long = "rain", "a ceramic cup placed on a saucer in a quiet cafe, distant chatter"
    tok = m.tokenizer([short, long]).input_ids
    assert len(tok[0]) != len(tok[1])  # a real tokenizer: other token counts
    batched = _gen(m, [long, short, short, long], [3, 11, 12, 4],
                   negatives=[None, "wind", None, "music"])
    alone_short = _gen(m, [short], [11], negatives=["wind"])[0]
    alone_long = _gen(m, [long], [4], negatives=["music"])[0]
    np.testing.assert_array_equal(alone_short, batched[1])
    np.testing.assert_array_equal(alone_long, batched[3])
    assert np.abs(batched[1] - batched[2]).max() > 1e-3  # another seed (and no negative)
    assert np.abs(batched[0] - batched[3]).max() > 1e-3


def test_the_decoder_in_chunks_equals_one_decode(sao1_model) -> None:  # type: ignore[no-untyped-def]
    from soundscape.generate.stable_audio import decode

    m = sao1_model
    latents = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(0))
    frames = 40 * 2048 - 1000
    whole = decode(m, latents, frames, chunk=1000)
    chunked = decode(m, latents, frames, chunk=7, overlap=16)
    assert whole.shape == chunked.shape == (2, frames)
    peak = np.abs(whole).max()
    np.testing.assert_allclose(chunked, whole, atol=1e-5 * peak)


def test_guidance_halves_share_one_forward_and_none_at_cfg_1(sao1_model) -> None:  # type: ignore[no-untyped-def]
    m = sao1_model
    rows: list[int] = []
    encoded: list[int] = []
    dit_forward = m.transformer.forward
    t5_forward = m.text_encoder.forward

    def count_dit(x, *a, **k):  # type: ignore[no-untyped-def]
        rows.append(x.shape[0])
        return dit_forward(x, *a, **k)

    def count_t5(ids, *a, **k):  # type: ignore[no-untyped-def]
        encoded.append(ids.shape[0])
        return t5_forward(ids, *a, **k)

    m.transformer.forward, m.text_encoder.forward = count_dit, count_t5
    try:
        _gen(m, ["a", "b", "c"], [1, 2, 3], steps=5, cfg=7.0, negatives=["x", None, "x"])
        assert rows == [6] * 5  # 3 takes, both halves, one forward per step
        assert encoded == [1] * 4  # a, b, c and the negative 'x' once
        rows.clear()
        encoded.clear()
        _gen(m, ["a", "b"], [1, 2], steps=4, cfg=1.0)
        assert rows == [2] * 4 and encoded == [1, 1]
    finally:
        del m.transformer.forward, m.text_encoder.forward


# --- the scene format: settings belong to engines ---------------------------------------------

@pytest.mark.parametrize(("snippet", "expected"), [
    ("  bell: {prompt: a bell, top_k: 50}\n",
     "S:6: elements.bell.top_k: Stable Audio Open 1.0 has no top_k (it is a setting of "
     "AudioGen); remove it, or give this element a model: that takes it"),
    ("  bell: {prompt: a bell, duration: 60 s}\n",
     "S:6: elements.bell.duration: a 60 s take is longer than the 47 s Stable Audio Open 1.0 "
     "makes in one generation; use a shorter take and loop it (loop: true) or scatter it"),
    ("  bell: {prompt: a bell, sampler: euler}\n",
     "S:6: elements.bell.sampler: 'euler' is not a sampler of Stable Audio Open 1.0; use one "
     "of dpmpp-2m-sde, dpmpp-sde"),
    ("  bell: {prompt: a bell, model: stable-audio-open-small, sampler: dpmpp-sde}\n",
     "S:6: elements.bell.sampler: Stable Audio Open Small has no sampler (it is a setting of "
     "Stable Audio Open 1.0); remove it, or give this element a model: that takes it"),
    ("  bell: {prompt: a bell, model: audiogen-medium, steps: 20}\n",
     "S:6: elements.bell.steps: AudioGen has no steps (it is a setting of Stable Audio Open "
     "1.0 and Stable Audio Open Small); remove it, or give this element a model: that takes it"),
])
def test_a_setting_of_another_engine_is_one_file_line_error(tmp_path: Path, snippet: str,
                                                            expected: str) -> None:
    scene = tmp_path / "s.yaml"
    scene.write_text("name: s\nduration: 3 s\nmodel: stable-audio-open-1.0\n"
                     "defaults: {duration: 1 s}\nelements:\n" + snippet)
    code, text = run_cli("validate", str(scene))
    lines = text.strip().splitlines()
    assert code == 1 and "Traceback" not in text, text
    assert lines == [f"Error: {expected.replace('S:', f'{scene}:')}"]


def test_the_schema_says_which_engine_takes_each_setting() -> None:
    from soundscape.scene.load import json_schema

    schema = json.dumps(json_schema())
    defs = json_schema()["$defs"]
    props = defs["Element"]["properties"]
    assert props["top_k"]["x-engines"] == ["audiogen"]
    assert props["sampler"]["x-engines"] == ["stable-audio-open-1.0"]
    assert props["steps"]["x-engines"] == ["stable-audio-open-1.0", "stable-audio-open-small"]
    assert "balance" in props["pan"]["description"] and "model" in props
    assert "stable-audio-open-small" in schema


# --- the hub: gated repository, token, first download, offline --------------------------------

def _render_env(hf_home: Path, hub: HubStub | None, **extra: str) -> dict[str, str]:
    env = {**env_without_pytest(), "HF_HOME": str(hf_home), "HF_HUB_ETAG_TIMEOUT": "5", **extra}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_TOKEN", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return env


def test_a_gated_repository_without_a_token_is_one_error_line(sao1_hub: Path,
                                                              tmp_path: Path) -> None:
    scene = tmp_path / "bells.yaml"
    scene.write_text(SCENE.format())
    with HubStub(sao1_hub / "hub", (SAO_1_REPO,), gated=(SAO_1_REPO,), token="hf_good") as hub:
        res = subprocess.run([sys.executable, "-m", "soundscape", "render", str(scene),
                              "--out", str(tmp_path / "o")], capture_output=True, text=True,
                             env=_render_env(tmp_path / "empty", hub), timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines == [
        f"Error: model '{SAO_1_REPO}' is gated and the hub answered 401: accept its licence "
        f"while logged in at https://huggingface.co/{SAO_1_REPO}, then authenticate here with "
        f"an access token, either HF_TOKEN=<token> in the environment or 'hf auth login' (a "
        f"token is made at https://huggingface.co/settings/tokens)"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["HF_TOKEN", "stored"])
def test_first_render_downloads_only_what_is_read_with_the_token_then_works_offline(
        sao1_hub: Path, tmp_path: Path, how: str) -> None:
    hf_home = tmp_path / "hf"
    scene = tmp_path / "bells.yaml"
    scene.write_text(SCENE.format())
    extra = {"HF_TOKEN": "hf_good"} if how == "HF_TOKEN" else {}
    if how == "stored":  # where 'hf auth login' keeps it
        hf_home.mkdir()
        (hf_home / "token").write_text("hf_good")
    with HubStub(sao1_hub / "hub", (SAO_1_REPO,), gated=(SAO_1_REPO,), token="hf_good") as hub:
        env = _render_env(hf_home, hub)
        env.update(extra)
        res = subprocess.run([sys.executable, "-m", "soundscape", "render", str(scene),
                              "--out", str(tmp_path / "a")], capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"downloading {SAO_1_REPO} (" in res.stderr
        fetched = hub.fetched(SAO_1_REPO)
        sent = {a for (_, path), a in zip(hub.requests, hub.authorizations, strict=True)
                if SAO_1_REPO in path}
        assert sent == {"Bearer hf_good"}  # every request for the repository carried it
    assert "model_index.json" in fetched and "transformer/config.json" in fetched
    assert "vae/diffusion_pytorch_model.safetensors" in fetched
    assert not fetched & set(UNREAD_FILES)  # not the 4.85 GB stable-audio-tools files
    m = manifest(tmp_path / "a", "bells")
    commit = (hf_home / "hub" / repo_folder(SAO_1_REPO) / "refs" / "main").read_text().strip()
    take = m["elements"][0]["takes"][0]
    assert (take["engine"], take["revision"], take["model"]) == (
        "stable-audio-open-1.0", commit, f"hub:{SAO_1_REPO}")
    assert take["licence"] == "Stability AI Community License" and take["commercial"]
    assert "Powered by Stability AI" in (tmp_path / "a" / "bells" / "NOTICE.txt").read_text()
    # offline, another take store: generated again from the cache, same keys and audio
    env = _render_env(hf_home, None, HF_HUB_OFFLINE="1",
                      SOUNDSCAPE_CACHE_DIR=str(tmp_path / "other_takes"))
    res = subprocess.run([sys.executable, "-m", "soundscape", "render", str(scene),
                          "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    b = manifest(tmp_path / "b", "bells")
    assert b["generated"] == 1 and b["elements"][0]["takes"][0]["key"] == take["key"]
    # a cached render imports neither torch nor diffusers
    probe = ("import sys, runpy; sys.argv = ['soundscape'] + sys.argv[1:]; "
             "import soundscape.cli as c\ntry:\n    c.app()\nexcept SystemExit as e:\n"
             "    assert not e.code, e.code\n"
             "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'audiocraft') "
             "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe, "render", str(scene), "--out",
                          str(tmp_path / "b")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_takes_are_keyed_by_the_hub_revision(sao1_hub: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same hub id at another commit (the real weights arriving where a replica was) is
    another take: nothing made with the replica is served as the real model's."""
    from soundscape.generate.models import resolve
    from soundscape.takes.plan import Models

    other = write_sao1_hub(tmp_path / "other", seed=1)
    keys = []
    for home in (sao1_hub, other):
        monkeypatch.setenv("HF_HOME", str(home))
        pinned = Models().pin("stable-audio-open-1.0", tmp_path)
        assert pinned.ref == resolve(SAO_1_REPO)
        keys.append(pinned.revision)
    assert keys[0] != keys[1] and all(len(k) == 40 for k in keys)


def test_a_render_measures_and_keys_its_cost_by_engine_and_revision(
        sao1_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        _isolated_cache: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(sao1_hub))
    scene = tmp_path / "bells.yaml"
    scene.write_text(SCENE.format())
    code, text = run_cli("render", str(scene), "--out", str(tmp_path / "o"))
    assert code == 0, text
    assert "with Stable Audio Open 1.0; measured here:" in text
    costs = json.loads((_isolated_cache / "cost.json").read_text())
    commit = (sao1_hub / "hub" / repo_folder(SAO_1_REPO) / "refs" / "main").read_text().strip()
    assert [k.split("|")[1:4] for k in costs] == [
        ["stable-audio-open-1.0", f"hub:{SAO_1_REPO}", commit]]
    assert os.path.exists(tmp_path / "o" / "bells" / "NOTICE.txt")
    code, text = run_cli("doctor", "--model", "stable-audio-open-1.0")
    line = next(x for x in text.splitlines() if x.startswith("engine SAO 1.0"))
    assert "Stability AI Community License, commercial use allowed under US$1M" in line
    assert f"{SAO_1_REPO} cached, gated: accept the licence at https://huggingface.co/" \
        f"{SAO_1_REPO}" in line
    assert "s of compute per second of audio at" in line and "measured here" in line
    assert f"SAO 1.0 weights   ok       {SAO_1_REPO} in " in text
    ag = next(x for x in text.splitlines() if x.startswith("engine AudioGen"))
    assert "CC-BY-NC-4.0, non-commercial use only" in ag and "not gated" in ag
    # other weights under the same id (the real ones where the replica was): not measured
    monkeypatch.setenv("HF_HOME", str(write_sao1_hub(tmp_path / "real", seed=1)))
    code, text = run_cli("doctor", "--model", "stable-audio-open-1.0")
    line = next(x for x in text.splitlines() if x.startswith("engine SAO 1.0"))
    assert line.endswith("speed not measured here")


def test_dev_tiny_model_writes_the_published_layouts(tmp_path: Path) -> None:
    from soundscape.generate.dev.sa_replica import MODEL_INDEX
    from soundscape.generate.models import resolve

    code, text = run_cli("dev", "tiny-model", str(tmp_path / "m"), "--engine",
                         "stable-audio-open-1.0")
    assert code == 0, text
    assert json.loads((tmp_path / "m/model_index.json").read_text()) == MODEL_INDEX
    for folder in ("vae", "projection_model", "transformer", "scheduler"):
        config = json.loads(next((tmp_path / "m" / folder).glob("*config.json")).read_text())
        assert config["_class_name"] == MODEL_INDEX[folder][1]
    t5 = json.loads((tmp_path / "m/text_encoder/config.json").read_text())
    assert t5["model_type"] == "t5" and t5["architectures"] == ["T5EncoderModel"]
    tok = json.loads((tmp_path / "m/tokenizer/tokenizer_config.json").read_text())
    assert tok["model_max_length"] == 128
    assert resolve(str(tmp_path / "m")).engine == "stable-audio-open-1.0"
    code, text = run_cli("dev", "tiny-model", str(tmp_path / "hf"), "--engine",
                         "stable-audio-open-1.0", "--layout", "hub")
    assert code == 0, text
    snaps = list((tmp_path / "hf/hub" / repo_folder(SAO_1_REPO) / "snapshots").glob("*"))
    assert len(snaps) == 1 and (snaps[0] / "model_index.json").is_file()
    assert (snaps[0] / "model.ckpt").is_file()  # beside the diffusers folders, as published
