"""The published AudioGen's code paths, replicated offline: the hub cache layout, the pickled
DictConfig checkpoint, T5 with a real tokenizer, the first download through a hub stand-in, a
failing hub, and (when the real weights are cached) a smoke test of the real model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundscape.errors import GeneratorError
from soundscape.generate import TakeRequest, audiogen_request
from soundscape.generate.dev.replica import AUDIOGEN_REPO, T5_REPO, UNREAD_T5_FILES, repo_folder
from soundscape.generate.models import cached_hub_dir, hub_cache_dir, resolve, text_encoder_dir
from tests.conftest import manifest, run_cli
from tests.hubstub import HubStub

ROOT = Path(__file__).resolve().parents[1]
REAL_HUB_CACHE = hub_cache_dir()  # the user's cache, read before conftest isolates each test
REPOS = (AUDIOGEN_REPO, T5_REPO)
SMALL = """\
name: small
duration: 4 s
seed: 5
defaults: {duration: 1 s}
elements:
  rain: {prompt: rain on a roof, loop: {crossfade: 200 ms}}
  drip: {prompt: a single water drip, duration: 0.5 s, at: 1 s}
master: {loudness: -20 LUFS}
"""


@pytest.fixture(scope="session")
def hub_replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``HF_HOME`` holding the tiny replica of facebook/audiogen-medium and t5-large."""
    from soundscape.generate.dev.replica import write_hub_replica

    return write_hub_replica(tmp_path_factory.mktemp("hf_replica"))


@pytest.fixture
def on_replica(hub_replica: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hub_replica))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_replica


@pytest.fixture(scope="module")
def t5_generator(hub_replica: Path):  # type: ignore[no-untyped-def]
    from soundscape.generate.audiogen import Generator

    old = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(hub_replica)
    try:
        return Generator(resolve(AUDIOGEN_REPO), "cpu", max_batch=8)
    finally:
        if old is None:
            os.environ.pop("HF_HOME")
        else:
            os.environ["HF_HOME"] = old


def req(prompt: str, seed: int, duration: float = 1.0) -> TakeRequest:
    return audiogen_request("hub:m", prompt, duration, 1.0, 250, 0.0, 3.0, 5.0, seed)




def snapshot_files(hf_home: Path, repo: str) -> set[str]:
    snaps = list((hf_home / "hub" / repo_folder(repo) / "snapshots").glob("*"))
    assert len(snaps) == 1
    return {p.relative_to(snaps[0]).as_posix() for p in snaps[0].rglob("*") if p.is_file()}


# --- the checkpoint: exactly the types the published files pickle ---------------------------

def test_published_checkpoints_need_exactly_the_allowed_types(on_replica: Path) -> None:
    import torch

    from soundscape.generate.audiogen import checkpoint_globals, load_checkpoint

    snap = cached_hub_dir(AUDIOGEN_REPO)
    assert snap is not None
    allowed = {f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', '')}"
               for t in checkpoint_globals()}
    allowed.add("typing.Any")
    for f in ("state_dict.bin", "compression_state_dict.bin"):
        needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(snap / f))
        assert "collections.defaultdict" in needed and "omegaconf.dictconfig.DictConfig" in needed
        assert needed <= allowed, needed - allowed  # everything it needs is allowed ...
        assert len(checkpoint_globals()) == len(needed)  # ... and nothing more
        pkg = load_checkpoint(snap / f)
        cfg = pkg["xp.cfg"]
        assert type(cfg).__name__ == "DictConfig" and cfg._get_flag("struct") is True
    lm = load_checkpoint(snap / "state_dict.bin")
    assert lm["xp.cfg"].conditioners.description.t5.name == "t5-large"
    assert lm["xp.cfg"].transformer_lm.memory_efficient is True
    assert {v.dtype for v in lm["best_state"].values()} == {torch.float16}
    # without collections.defaultdict the published file does not load (the measured failure)
    with torch.serialization.safe_globals([t for t in checkpoint_globals()
                                           if t.__name__ != "defaultdict"]), \
            pytest.raises(Exception, match="collections.defaultdict"):
        torch.load(snap / "state_dict.bin", weights_only=True)


def test_a_checkpoint_with_another_type_is_refused_naming_it(tmp_path: Path) -> None:
    import datetime

    import torch

    from soundscape.generate.audiogen import load_checkpoint

    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": {}, "xp.cfg": "lm_model: x", "when": datetime.date(2024, 1, 1)},
               path)
    with pytest.raises(GeneratorError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: the checkpoint pickles the type datetime.date, "
                                   f"which soundscape does not load")


# --- T5: takes do not depend on their batch-mates ----------------------------------------------

def test_t5_prompts_of_different_token_lengths_are_batch_independent(t5_generator) -> None:  # type: ignore[no-untyped-def]
    g = t5_generator
    assert type(g.model.lm.condition_provider.conditioners["description"]).__name__ == \
        "T5Conditioner"
    short, long = "rain", "a ceramic cup placed on a saucer in a quiet cafe"
    assert g._prompt_shape(short) != g._prompt_shape(long)  # a real tokenizer: other lengths
    assert g._prompt_shape(short) == g._prompt_shape("wind")  # one token each: may share
    requests = [req(long, 3), req(short, 11), req(short, 12), req(long, 4)]
    assert g.plan_batches(requests) == [[0, 3], [1, 2]]
    alone_short = g.generate([req(short, 11)])[0]
    alone_long = g.generate([req(long, 4)])[0]
    batched = g.generate(requests)
    np.testing.assert_array_equal(alone_short, batched[1])
    np.testing.assert_array_equal(alone_long, batched[3])
    assert alone_short.shape == (1, 16000) and np.abs(alone_short).max() > 1e-3
    assert np.abs(batched[1] - batched[2]).max() > 1e-3  # another seed, another take


def test_sampler_refuses_rows_it_has_no_seed_for(t5_generator) -> None:  # type: ignore[no-untyped-def]
    import torch
    from audiocraft.utils import utils as ac_utils

    from soundscape.generate.audiogen import per_row_sampling

    probs = torch.full((3, 1, 8), 1 / 8)
    with per_row_sampling([1, 2], "cpu"):
        assert ac_utils.multinomial(probs[:2], 1).shape == (2, 1, 1)
        with pytest.raises(GeneratorError, match="the sampler got 3 rows for 2 seeded takes"):
            ac_utils.multinomial(probs, 1)


# --- the README's command on the replica, offline -------------------------------------------

def test_rainy_cafe_renders_through_t5_offline_and_repeats_without_audiocraft(
        on_replica: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    cmd = ["render", str(ROOT / "scenes/rainy_cafe.yaml"), "--all-variants", "--out", str(out)]
    code, text = run_cli(*cmd)
    assert code == 0, text
    m = manifest(out, "rainy_cafe", "night")
    assert m["model"] == AUDIOGEN_REPO
    assert {t["model"] for e in m["elements"] for t in e["takes"]} == {f"hub:{AUDIOGEN_REPO}"}
    assert sum(manifest(out, "rainy_cafe", v)["generated"] for v in ("day", "night")) > 0
    assert abs(m["mix"]["loudness_lufs"] - (-18)) <= 0.5
    probe = ("import sys; from soundscape.cli import app; from typer.testing import CliRunner; "
             "r = CliRunner().invoke(app, sys.argv[1:]); assert r.exit_code == 0, r.output; "
             "print(sorted(m for m in ('torch', 'audiocraft', 'transformers', 'diffusers') "
             "if m in sys.modules))")
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    # up to date: nothing generated, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == written


# --- the connected path, through a stand-in for the hub -------------------------------------

def test_first_render_downloads_both_repositories_then_works_offline(
        hub_replica: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home = tmp_path / "hf_empty"
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_ETAG_TIMEOUT": "5"}
    env.pop("HF_HUB_OFFLINE", None)
    with HubStub(hub_replica / "hub", REPOS) as hub:
        env["HF_ENDPOINT"] = hub.url
        res = subprocess.run([sys.executable, "-m", "soundscape", "render", str(scene),
                              "--out", str(tmp_path / "a")], capture_output=True, text=True,
                             env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"downloading {AUDIOGEN_REPO} (2 files" in res.stderr
        assert f"downloading {T5_REPO} (6 files" in res.stderr
        assert "Please reinstall xformers" not in res.stderr  # no false alarm
        assert hub.fetched(AUDIOGEN_REPO) == {"state_dict.bin", "compression_state_dict.bin"}
        t5 = {"config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json", "model.safetensors"}
        assert hub.fetched(T5_REPO) == t5  # no TF/Flax/Rust/ONNX, one weights file
    assert snapshot_files(hf_home, T5_REPO) == t5
    assert not set(UNREAD_T5_FILES) & snapshot_files(hf_home, T5_REPO)
    assert manifest(tmp_path / "a", "small")["generated"] == 2
    # the server is gone: a render that must load the model reads the cache only
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SOUNDSCAPE_CACHE_DIR", str(tmp_path / "other_takes"))
    code, text = run_cli("render", str(scene), "--out", str(tmp_path / "b"))
    assert code == 0, text
    assert manifest(tmp_path / "b", "small")["generated"] == 2
    a = manifest(tmp_path / "a", "small")
    b = manifest(tmp_path / "b", "small")
    assert [t["key"] for e in a["elements"] for t in e["takes"]] == \
        [t["key"] for e in b["elements"] for t in e["takes"]]


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_failing_hub_is_one_clear_error_within_seconds(
        hub_replica: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with HubStub(hub_replica / "hub", REPOS, mode) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        t0 = time.perf_counter()
        code, text = run_cli("render", str(scene), "--out", str(tmp_path / "o"))
        elapsed = time.perf_counter() - t0
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in text, text
    assert lines[0].startswith(f"Error: model '{AUDIOGEN_REPO}' is not available: the Hugging "
                               f"Face hub at {hub.url} could not be reached or failed (")
    assert ("500" in lines[0]) if mode == "error" else ("Timeout" in lines[0])
    assert "hf download facebook/audiogen-medium" in lines[0]
    assert elapsed < 20
    assert not (tmp_path / "o").exists()


def test_missing_text_encoder_offline_names_it(hub_replica: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    hf_home = tmp_path / "hf"
    shutil.copytree(hub_replica / "hub" / repo_folder(AUDIOGEN_REPO),
                    hf_home / "hub" / repo_folder(AUDIOGEN_REPO), symlinks=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    assert cached_hub_dir(AUDIOGEN_REPO) is not None and text_encoder_dir() is None
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    code, text = run_cli("render", str(scene), "--out", str(tmp_path / "o"))
    assert code == 1 and len(text.strip().splitlines()) == 1
    assert text.startswith("Error: model 't5-large' is not available: HF_HUB_OFFLINE is set and "
                           "facebook/audiogen-medium's text encoder 't5-large' is not in the "
                           "cache")


# --- soundscape doctor ----------------------------------------------------------------------

def test_doctor_reports_cached_weights_and_fixes(on_replica: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code, text = run_cli("doctor")
    assert code == 0, text
    snap = cached_hub_dir(AUDIOGEN_REPO)
    assert f"AudioGen weights  ok       {AUDIOGEN_REPO} in {snap}" in text
    assert f"text encoder      ok       {T5_REPO} in {text_encoder_dir()}" in text
    assert "offline (HF_HUB_OFFLINE=1)" in text
    assert "torch" in text and "device" in text and "free disk" in text
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    code, text = run_cli("doctor")
    assert code == 1
    assert f"AudioGen weights  MISSING  {AUDIOGEN_REPO}" in text
    assert f"fix: on a connected machine run 'hf download {AUDIOGEN_REPO}'" in text
    assert f"fix: on a connected machine run 'hf download {T5_REPO}'" in text
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for mode, line in (("ok", "hub               ok       online: {} answers; the first render "
                              "downloads missing weights"),
                       ("hang", "hub               warning  online, but {} cannot be reached")):
        with HubStub(on_replica / "hub", REPOS, mode) as hub:
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            code, text = run_cli("doctor")
        assert line.format(hub.url) in text, text
        assert "let the first render download it" in text


# --- the real weights, when a user has them -------------------------------------------------

def _real_weights_cached() -> bool:
    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(REAL_HUB_CACHE)
    try:
        return cached_hub_dir(AUDIOGEN_REPO) is not None and text_encoder_dir() is not None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_CACHE")
        else:
            os.environ["HF_HUB_CACHE"] = old


@pytest.mark.skipif(not _real_weights_cached(),
                    reason=f"{AUDIOGEN_REPO} and {T5_REPO} are not in the local Hugging Face "
                           f"cache ({REAL_HUB_CACHE}); 'hf download {AUDIOGEN_REPO}' and "
                           f"'hf download {T5_REPO}' enable this test")
def test_real_audiogen_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    from soundscape.generate.audiogen import Generator

    monkeypatch.setenv("HF_HUB_CACHE", str(REAL_HUB_CACHE))
    g = Generator(resolve(AUDIOGEN_REPO), "auto", max_batch=4)
    prompt, longer = "dog barking", "a dog barking far away in a quiet village street at night"
    alone = g.generate([req(prompt, 1234)])[0]
    assert g.sample_rate == 16000
    assert alone.shape == (1, 16000) and alone.dtype == np.float32
    assert np.isfinite(alone).all() and float(np.sqrt(np.mean(alone ** 2))) > 1e-3
    assert g._prompt_shape(prompt) != g._prompt_shape(longer)
    # On CUDA the LM runs in float16, where the batch size may change rounding, so the batch
    # mate with the prompt's own token count is added on the CPU only.
    mates = [req(prompt, 99)] if g.device == "cpu" else []
    batched = g.generate([req(longer, 5), req(prompt, 1234), *mates])
    np.testing.assert_array_equal(alone, batched[1])


def test_tiny_model_refuses_an_unknown_layout(tmp_path: Path) -> None:
    code, text = run_cli("dev", "tiny-model", str(tmp_path / "m"), "--layout", "zip")
    assert (code, text.strip()) == (1, "Error: --layout 'zip' is not a layout; use export or hub")
    assert not (tmp_path / "m").exists()
