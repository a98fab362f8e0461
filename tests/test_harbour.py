"""The shipped Stable Audio Open Small scene (scenes/harbour.yaml), rendered through the published
hub layout of Small and its t5-base on their tiny replicas, offline, and checked by numbers: length,
rate, channels, loudness, where each sound lands, the takes' engine, rate, licence and notice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile

from tests.conftest import ROOT, manifest, run_cli

torch = pytest.importorskip("torch")
SR = 48000


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundscape.generate.stable_audio_small.tiny import write_small_hub_replica

    torch.set_num_threads(1)
    return write_small_hub_replica(tmp_path_factory.mktemp("small_hub"))


def test_the_shipped_small_scene_renders_to_its_numbers(
        small_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        _isolated_cache: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(small_hub))
    out = tmp_path / "o"
    code, text = run_cli("render", str(ROOT / "scenes/harbour.yaml"), "--all-variants",
                         "--out", str(out))
    assert code == 0, text
    for variant, bells in ((None, (12, 33)), ("fog", (6, 20, 34))):
        d = out / "harbour" / variant if variant else out / "harbour"
        m = manifest(out, "harbour", *([variant] if variant else []))
        mix, sr = soundfile.read(str(d / "mix.wav"), dtype="float32", always_2d=True)
        assert sr == SR and mix.shape == (45 * SR, 2)
        lufs = pyloudnorm.Meter(SR).integrated_loudness(mix.astype(np.float64))
        said = [w for w in m["warnings"] if w["stage"] == "master"]
        assert abs(lufs - -20) <= 0.5 or len(said) == 1, (lufs, said)
        engines = {t["engine"] for e in m["elements"] for t in e["takes"]}
        assert engines == {"stable-audio-open-small"}
        assert [x["licence"] for x in m["licences"]] == ["Stability AI Community License"]
        assert (d / "NOTICE.txt").read_text().startswith("Powered by Stability AI.")
        bell, _ = soundfile.read(str(d / "stems/bell.wav"), dtype="float32", always_2d=True)
        on = np.abs(bell).max(axis=1) > 1e-6
        assert not on[:bells[0] * SR].any()
        for t in bells:  # each ring starts where the scene says
            assert on[t * SR:t * SR + SR // 10].any()
            assert not on[t * SR - SR // 2:t * SR].any() or t != bells[0]
        water, _ = soundfile.read(str(d / "stems/water.wav"), dtype="float32", always_2d=True)
        assert np.abs(water[:, 0] - water[:, 1]).max() > 1e-3  # stereo takes stay stereo
    sides = [json.loads(p.read_text()) for p in (_isolated_cache / "takes").rglob("*.json")]
    assert sides and {(s["sample_rate"], s["engine"]) for s in sides} == \
        {(44100, "stable-audio-open-small")}
