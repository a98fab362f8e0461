"""One scene, two engines: AudioGen (16 kHz mono, CC-BY-NC) and Stable Audio Open 1.0 (44.1 kHz
stereo, Stability AI Community License) rendered together on their replicas and checked by numbers
(length, rate, channels, loudness, where each sound lands, the balance of a stereo take), with the
licences, the notice, --commercial, and loops, pools and SFX lists on stereo takes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
from scipy.signal import resample_poly

from tests.conftest import manifest, run_cli

torch = pytest.importorskip("torch")

SR = 48000


@pytest.fixture(scope="module")
def sao1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundscape.generate.dev.sa_replica import write_tiny_sao1

    torch.set_num_threads(1)
    return write_tiny_sao1(tmp_path_factory.mktemp("sao1") / "model")


def mixed_scene(tmp_path: Path, audiogen: Path, sao1: Path, extra: str = "") -> Path:
    scene = tmp_path / "mixed.yaml"
    scene.write_text(f"""\
name: mixed
duration: 6 s
sample_rate: 48 kHz
model: {audiogen}
defaults: {{duration: 1 s, steps: 5}}
{extra}elements:
  hum: {{prompt: a low hum, at: 0.5 s}}
  bell: {{prompt: a small bell, model: {sao1}, at: 3 s, pan: 0.5}}
  bed: {{prompt: rain, model: {sao1}, duration: 2 s, loop: {{crossfade: 200 ms}}, volume: -12 dB}}
  drops: {{prompt: drips, model: {sao1}, duration: 0.5 s, volume: -6 dB,
          scatter: {{interval: [1 s, 2 s]}}}}
master: {{loudness: -20 LUFS}}
""")
    return scene


def read(path: Path) -> tuple[np.ndarray, int]:
    data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.T, sr


def test_a_scene_mixing_audiogen_and_stable_audio_renders_by_numbers(
        tmp_path: Path, tiny_model: Path, sao1_dir: Path, _isolated_cache: Path) -> None:
    scene = mixed_scene(tmp_path, tiny_model, sao1_dir)
    out = tmp_path / "o"
    code, text = run_cli("render", str(scene), "--out", str(out), "--loops", "--export",
                         "pools", "--bit-depth", "32")  # float stems: the replica's peak > 1
    assert code == 0, text
    d = out / "mixed"
    mix, sr = read(d / "mix.wav")
    assert (sr, mix.shape) == (SR, (2, 6 * SR))
    lufs = pyloudnorm.Meter(SR).integrated_loudness(mix.T)
    assert abs(lufs - -20) <= 0.5
    m = manifest(out, "mixed")
    takes = {e["element"]: e["takes"] for e in m["elements"]}
    assert {t["engine"] for t in takes["hum"]} == {"audiogen"}
    assert {t["engine"] for n in ("bell", "bed", "drops") for t in takes[n]} == \
        {"stable-audio-open-1.0"}
    # the takes at their engines' own rate and channels, in the store
    side = json.loads(next((_isolated_cache / "takes").rglob(
        f"{takes['bell'][0]['key']}.json")).read_text())
    bell_take, take_sr = read(side_path := next((_isolated_cache / "takes").rglob(
        side["audio_file"])))
    assert side_path.is_file() and (take_sr, bell_take.shape) == (44100, (2, 44100))
    hum_side = json.loads(next((_isolated_cache / "takes").rglob(
        f"{takes['hum'][0]['key']}.json")).read_text())
    assert (hum_side["sample_rate"], hum_side["licence"]) == (16000, "CC-BY-NC-4.0")
    # where each sound lands, in the stems (pre-master)
    hum, _ = read(d / "stems/hum.wav")
    bell, _ = read(d / "stems/bell.wav")
    assert hum.shape == bell.shape == (2, 6 * SR)
    on = np.abs(hum).max(axis=0) > 1e-6
    assert not on[:round(0.5 * SR)].any() and on[round(0.5 * SR):round(0.6 * SR)].any()
    assert not on[round(1.5 * SR) + 1:].any()
    bon = np.abs(bell).max(axis=0) > 1e-6
    assert not bon[:round(3 * SR)].any() and not bon[round(4 * SR) + 1:].any()
    # a stereo take stays stereo and pan is a balance: pan 0.5 halves the left, keeps the right
    from soundscape.dsp.dcblock import block_dc  # conforming removes the take's DC offset

    expected = resample_poly(block_dc(bell_take, 44100), 160, 147, axis=1)[:, :SR]
    got = bell[:, round(3 * SR):round(3 * SR) + SR]
    core = slice(2000, SR - 2000)  # the resamplers differ at the edges
    left_ratio = np.sqrt(np.mean(got[0, core] ** 2) / np.mean(expected[0, core] ** 2))
    right_ratio = np.sqrt(np.mean(got[1, core] ** 2) / np.mean(expected[1, core] ** 2))
    # (scipy's and soxr's resamplers differ by ~1% on this noise's top octave, alike per side)
    assert abs(left_ratio / right_ratio - 0.5) < 0.005 and abs(right_ratio - 1.0) < 0.03
    assert np.corrcoef(got[0, core], got[1, core])[0, 1] < 0.99  # not a mono take panned
    # loops and pools of stereo takes are stereo at the scene's rate
    loop, lsr = read(d / "loops/bed.wav")
    assert lsr == SR and loop.shape[0] == 2 and np.abs(loop[0] - loop[1]).max() > 1e-3
    pool = sorted((d / "pools").rglob("*.wav"))
    assert pool and all(read(p)[0].shape[0] == 2 for p in pool)
    # licences: both listed, the non-commercial one names its element; the notice is written
    lic = {x["licence"]: x for x in m["licences"]}
    assert lic["CC-BY-NC-4.0"]["elements"] == ["hum"] and not lic["CC-BY-NC-4.0"]["commercial"]
    assert lic["Stability AI Community License"]["elements"] == ["bell", "bed", "drops"]
    notice = (d / "NOTICE.txt").read_text()
    assert notice.startswith("Powered by Stability AI.\n")
    assert "Non-commercial: hum were made with AudioGen under CC-BY-NC-4.0" in notice
    page = (d / "index.html").read_text()
    assert 'id="licences"' in page and "Stability AI Community License" in page


@pytest.mark.parametrize("how", ["flag", "scene"])
def test_commercial_refuses_a_non_commercial_engine_before_generating(
        tmp_path: Path, tiny_model: Path, sao1_dir: Path, _isolated_cache: Path,
        how: str) -> None:
    scene = mixed_scene(tmp_path, tiny_model, sao1_dir,
                        "commercial: true\n" if how == "scene" else "")
    args = ["render", str(scene), "--out", str(tmp_path / "o")]
    code, text = run_cli(*args, *(["--commercial"] if how == "flag" else []))
    assert code == 1 and text.strip().splitlines() == [
        "Error: commercial use was asked for (--commercial or commercial: true) but mixed/hum "
        "would be made with AudioGen (CC-BY-NC-4.0, non-commercial use only); give those "
        "elements a model whose licence allows it, e.g. model: stable-audio-open-small, or drop "
        "--commercial"]
    assert not list(_isolated_cache.rglob("*.wav"))  # nothing generated
    assert not (tmp_path / "o").exists()


def test_an_sfx_list_of_stable_audio_takes_lists_its_licence_and_notice(
        tmp_path: Path, sao1_dir: Path, tiny_model: Path) -> None:
    lst = tmp_path / "ui.yaml"
    lst.write_text(f"name: ui\nmodel: {sao1_dir}\ncommercial: true\n"
                   "defaults: {duration: 0.6 s, variations: 2}\n"
                   "sounds:\n  - {name: click, prompt: a soft click}\n")
    code, text = run_cli("sfx", str(lst), "--out", str(tmp_path / "o"))
    assert code == 0, text
    root = tmp_path / "o/ui"
    rows = list(csv.DictReader((root / "catalog.csv").open(newline="")))
    assert [(r["licence"], r["commercial"]) for r in rows] == \
        [("Stability AI Community License", "yes")] * 2
    for r in rows:
        audio, sr = read(root / r["file"])
        assert sr == 44100 and audio.shape[0] == 2
    assert (root / "NOTICE.txt").read_text().startswith("Powered by Stability AI.")
    data = json.loads((root / "manifest.json").read_text())
    assert data["engine"] == "stable-audio-open-1.0" and data["licences"][0]["commercial"]
    # the same list with AudioGen's non-commercial weights is refused
    lst.write_text(lst.read_text().replace(str(sao1_dir), str(tiny_model)))
    code, text = run_cli("sfx", str(lst), "--out", str(tmp_path / "o2"))
    assert code == 1 and len(text.strip().splitlines()) == 1
    assert "AudioGen's weights are CC-BY-NC-4.0, non-commercial use only" in text
