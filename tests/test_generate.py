"""Generator through real audiocraft with tiny checkpoints; end-to-end CLI renders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import read_audio
from soundscape.errors import GeneratorError, ModelNotFoundError
from soundscape.generate import TakeRequest, audiogen_request
from soundscape.generate.models import locate, resolve
from soundscape.takes.store import TakeCache
from tests.conftest import manifest, mtimes, run_cli

ROOT = Path(__file__).resolve().parents[1]


def req(ref_id: str, prompt: str, seed: int, duration: float = 1.0) -> TakeRequest:
    return audiogen_request(ref_id, prompt, duration, 1.0, 250, 0.0, 3.0, 5.0, seed)


@pytest.fixture(scope="module")
def generator(tiny_model: Path):  # type: ignore[no-untyped-def]
    from soundscape.generate.audiogen import Generator

    return Generator(resolve(str(tiny_model)), "cpu", max_batch=8)


@pytest.mark.parametrize("duration", [0.5, 1.0, 4.5])  # 4.5 s > the tiny 3 s window: extended
def test_exact_rate_and_length(generator, duration: float) -> None:  # type: ignore[no-untyped-def]
    [take] = generator.generate([req("m", "rain", 1, duration)])
    assert generator.sample_rate == 16000
    assert take.shape == (1, round(duration * 16000)) and take.dtype == np.float32
    assert np.abs(take).max() > 1e-3


def test_seed_is_batch_independent(generator) -> None:  # type: ignore[no-untyped-def]
    alone = generator.generate([req("m", "rain", 11, 4.5)])[0]
    batch = generator.generate([req("m", "dog", 3, 4.5), req("m", "rain", 11, 4.5),
                                req("m", "rain", 12, 4.5)])
    np.testing.assert_array_equal(alone, batch[1])
    assert np.abs(alone - batch[2]).max() > 1e-3  # another seed, another take


def test_oom_halves_the_batch(generator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    real = generator._generate_batch
    sizes = []

    def flaky(reqs):  # type: ignore[no-untyped-def]
        sizes.append(len(reqs))
        if len(reqs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(reqs)

    monkeypatch.setattr(generator, "_generate_batch", flaky)
    out = generator.generate([req("m", "a", s) for s in range(4)])
    assert len(out) == 4 and sizes[:3] == [4, 2, 1]
    monkeypatch.setattr(generator, "_generate_batch",
                        lambda reqs: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError()))
    with pytest.raises(GeneratorError, match="out of GPU memory generating one 1 s take"):
        generator.generate([req("m", "a", 1)])
    generator.max_batch = 8


def test_unreachable_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as e:
        locate(resolve("facebook/audiogen-medium"))
    msg = str(e.value)
    assert msg.startswith("model 'facebook/audiogen-medium' is not available: HF_HUB_OFFLINE")
    assert "hf download facebook/audiogen-medium" in msg and "--model DIR" in msg
    with pytest.raises(ModelNotFoundError, match="lacks state_dict.bin"):
        resolve(str(tmp_path))


def test_cache_detects_corruption(tmp_path: Path) -> None:
    cache = TakeCache(tmp_path)
    r = req("m", "x", 1)
    audio = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)[None]
    cache.put(r, audio, 16000, 0.1)
    got = cache.get(r.key)
    assert got is not None and np.array_equal(got[0], audio)
    meta = json.loads(cache.sidecar_path(r.key).read_text())
    assert meta["prompt"] == "x" and meta["seed"] == 1 and meta["generation_s"] == 0.1
    audio_file = cache.sidecar_path(r.key).parent / meta["audio_file"]
    audio_file.write_bytes(audio_file.read_bytes()[:100])  # truncated write
    assert cache.get(r.key) is not None  # this instance verified it already: content is fixed
    later = TakeCache(tmp_path)  # the next render
    assert later.get(r.key) is None and "damaged" in later.problems[0]


SMALL = """\
name: small
duration: 6 s
seed: 5
defaults: {duration: 1 s}
elements:
  rain: {prompt: rain on a roof, loop: {crossfade: 200 ms}, volume: -6 dB}
  drip: {prompt: a drip, duration: 0.5 s, variations: 2, scatter: {interval: [1 s, 2 s]}}
master: {loudness: -20 LUFS}
variants:
  night:
    elements:
      drip: null
      owl: {prompt: an owl, duration: 0.5 s, at: 2 s}
"""





def test_iteration_loop(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    out = tmp_path / "out"
    base = ["render", str(scene), "--model", str(tiny_model), "--out", str(out)]
    code, text = run_cli(*base, "--all-variants")
    assert code == 0, text
    assert manifest(out, "small")["generated"] == 3  # rain + two drips
    night = manifest(out, "small", "night")
    # owl made now; the shared rain take was made for the base, and the base says so
    assert night["generated"] == 1 and night["cached"] == 1
    assert [t["generated"] for e in night["elements"] if e["element"] == "rain"
            for t in e["takes"]] == [False]
    assert (out / "small/night/stems/owl.wav").is_file()
    assert not (out / "small/night/stems/drip.wav").exists()
    before = mtimes(out)
    code, text = run_cli(*base, "--all-variants")
    assert code == 0 and "small: up to date" in text and "small/night: up to date" in text
    assert mtimes(out) == before  # nothing was written
    scene.write_text(SMALL.replace("rain on a roof", "heavy rain on a tin roof"))
    run_cli(*base)
    m = manifest(out, "small")
    assert m["generated"] == 1
    assert [t["generated"] for e in m["elements"] for t in e["takes"]] == [True, False, False]
    assert [e["rendered"] for e in m["elements"]] == [True, False]  # the drip stem was kept
    scene.write_text(SMALL.replace("rain on a roof", "heavy rain on a tin roof")
                     .replace("volume: -6 dB", "volume: -2 dB, pan: 0.3, effects: [reverb]"))
    run_cli(*base)
    assert manifest(out, "small")["generated"] == 0
    before = (out / "small/stems/drip.wav").stat().st_mtime_ns
    scene.write_text(SMALL.replace("a drip", "a water drop"))
    code, text = run_cli(*base, "--only", "rain")
    m = manifest(out, "small")
    assert m["generated"] == 0  # the rain take was cached; the drip was not regenerated
    assert (out / "small/stems/drip.wav").stat().st_mtime_ns == before
    assert "drip has no take yet" in " ".join(w["message"] for w in m["warnings"])


def test_cached_render_loads_no_model(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    args = [str(scene), "--model", str(tiny_model), "--out", str(tmp_path / "o")]
    assert run_cli("render", *args)[0] == 0
    code = ("import sys; from soundscape.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['render'] + sys.argv[1:]); assert r.exit_code == 0, "
            "r.output; print(sorted(m for m in ('torch', 'audiocraft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, env=os.environ.copy())
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_plain_render_without_weights_fails_with_one_line(tmp_path: Path) -> None:
    code, text = run_cli("render", str(ROOT / "scenes/rainy_cafe.yaml"), "--out", str(tmp_path))
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in text
    assert lines[0].startswith("Error: model 'facebook/audiogen-medium' is not available")


def test_rainy_cafe_all_variants(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "r"
    code, text = run_cli("render", str(ROOT / "scenes/rainy_cafe.yaml"), "--all-variants",
                         "--model", str(tiny_model), "--out", str(out))
    assert code == 0, text
    for v in ("day", "night"):
        assert (out / "rainy_cafe" / v / "mix.wav").is_file()
        m = manifest(out, "rainy_cafe", v)
        assert abs(m["mix"]["loudness_lufs"] - (-18)) <= 0.5
        assert m["mix"]["true_peak_dbtp"] <= -0.9
    assert (out / "rainy_cafe/night/stems/crickets.wav").is_file()
    before = mtimes(out)
    code, text = run_cli("render", str(ROOT / "scenes/rainy_cafe.yaml"), "--all-variants",
                         "--model", str(tiny_model), "--out", str(out))
    assert code == 0 and text.count("up to date") == 3 and mtimes(out) == before


def test_takes_audition_and_keep(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text("# my scene\n" + SMALL)
    code, text = run_cli("takes", str(scene), "drip", "-n", "3", "--model", str(tiny_model),
                         "--out", str(tmp_path / "o"))
    assert code == 0, text
    files = sorted((tmp_path / "o/small/takes/drip").glob("drip-seed*.wav"))
    assert len(files) == 3
    seed = int(files[1].stem.split("seed")[1])
    code, text = run_cli("takes", str(scene), "drip", "--keep", str(seed))
    assert code == 0
    from soundscape.scene import load_scene

    assert load_scene(scene).elements["drip"].seed == seed
    assert scene.read_text().startswith("# my scene\n")


def test_sfx_example_list(tmp_path: Path, tiny_model: Path) -> None:
    lst = tmp_path / "sfx.yaml"
    lst.write_text((ROOT / "examples/game_sfx.yaml").read_text()
                   .replace("variations: 3", "variations: 1"))
    code, text = run_cli("sfx", str(lst), "--model", str(tiny_model), "--out", str(tmp_path))
    assert code == 0, text
    m = json.loads((tmp_path / "game_sfx/manifest.json").read_text())
    sounds = {v["sound"] for v in m["variations"]}
    assert len(sounds) == 14
    for v in m["variations"]:
        assert (tmp_path / "game_sfx" / v["file"]).is_file()
        assert v["true_peak_dbtp"] <= -0.9
        target = -18 if v["sound"] == "ui_click" else -14
        assert v["loudness_lufs"] == pytest.approx(target, abs=0.5)


@pytest.mark.parametrize("script", ["build_scene.py", "render_sfx.py"])
def test_examples_run(tmp_path: Path, tiny_model: Path, script: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--model",
                          str(tiny_model), "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(tmp_path.rglob("manifest.json"))


def test_killed_render_resumes_without_partial_files(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "long.yaml"
    scene.write_text(SMALL.replace("variations: 2", "variations: 12"))
    cmd = [sys.executable, "-m", "soundscape", "render", str(scene), "--model", str(tiny_model),
           "--out", str(tmp_path / "o"), "--max-batch", "1"]
    cache = Path(os.environ["SOUNDSCAPE_CACHE_DIR"])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    def finished() -> int:  # sidecars, written last (not cost.json, nor a sidecar's temp file)
        return sum(not p.name.startswith(".") for p in (cache / "takes").rglob("*.json"))

    while time.time() < deadline and finished() < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = finished()
    assert 3 <= done < 13
    # a kill inside a write may leave its temporary file (never the final name); the next
    # render removes it, as it removes every temp whose writer is dead
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    m = manifest(tmp_path / "o", "small")
    assert m["generated"] == 13 - done
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_two_renders_share_one_cache_at_once(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    cache = Path(os.environ["SOUNDSCAPE_CACHE_DIR"])
    procs = [subprocess.Popen([sys.executable, "-m", "soundscape", "render", str(scene),
                               "--model", str(tiny_model), "--out", str(tmp_path / name),
                               "--max-batch", "1", "--bit-depth", "32"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    ma, mb = manifest(tmp_path / "a", "small"), manifest(tmp_path / "b", "small")
    keys = {t["key"] for e in ma["elements"] for t in e["takes"]}
    assert keys == {t["key"] for e in mb["elements"] for t in e["takes"]} and len(keys) == 3
    assert len(list((cache / "takes").rglob("*.json"))) == 3  # one entry per take
    assert not list(cache.rglob(".*.tmp*"))
    for name in ("rain", "drip"):  # same seeds, same takes, same stems
        a, _ = read_audio(tmp_path / "a/small/stems" / f"{name}.wav")
        b, _ = read_audio(tmp_path / "b/small/stems" / f"{name}.wav")
        np.testing.assert_array_equal(a, b)


def test_two_takes_with_variations_pairs_each_variation(tmp_path: Path,
                                                        tiny_model: Path) -> None:
    scene = tmp_path / "pairs.yaml"
    scene.write_text("""\
name: pairs
duration: 6 s
seed: 4
elements:
  horns:
    prompt: a car horn
    duration: 0.5 s
    variations: 3
    stereo: two_takes
    scatter: {interval: [0.6 s, 1 s]}
master: {loudness: off, ceiling: 0}
""")
    code, text = run_cli("render", str(scene), "--model", str(tiny_model), "--out",
                         str(tmp_path / "o"), "--bit-depth", "32")
    assert code == 0, text
    [e] = manifest(tmp_path / "o", "pairs")["elements"]
    seeds = [t["seed"] for t in e["takes"]]
    assert len(seeds) == 6 and seeds == list(range(seeds[0], seeds[0] + 6))
    picked = {p["take"] for p in e["placements"]}
    assert picked <= {0, 1, 2} and len(picked) > 1  # one-shots pick among the 3 pairs
    stem, sr = read_audio(tmp_path / "o/pairs" / e["stem"])
    first = e["placements"][0]
    a = round(first["start_s"] * sr)
    left, right = stem[0, a:a + sr // 4], stem[1, a:a + sr // 4]
    assert np.abs(left).max() > 1e-3 and np.abs(right).max() > 1e-3
    assert np.abs(left - right).max() > 1e-3  # two different takes, not one panned
