"""Effects checked against the scene's rate; NaN/inf never reach a stem or the mix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundscape.arrange import arrange
from soundscape.cli import app
from soundscape.dsp.bus import Bus
from soundscape.dsp.effects import EffectSpec, check_effect_rates, parse_effect
from soundscape.errors import RenderError
from soundscape.mixer.element import ensure_finite, render_element
from soundscape.scene import scene_from_dict
from tests.conftest import wav


def test_a_cutoff_at_or_above_045_of_the_rate_is_named_with_its_limit() -> None:
    specs = (parse_effect({"highpass": {"cutoff": "80 Hz"}}, None),
             parse_effect({"lowpass": {"cutoff": "9 kHz"}}, None),
             parse_effect({"peak": {"cutoff": "7200 Hz", "gain": "3 dB"}}, None),
             parse_effect("reverb", None),
             parse_effect({"chorus": {"rate": "50 Hz"}}, None))
    assert check_effect_rates(specs, 16000, "elements.rain.effects") == [
        "elements.rain.effects[1].lowpass.cutoff: 9000 Hz is at or above 0.45 x the 16000 Hz "
        "sample rate (7200 Hz); set it below 7200 Hz or raise sample_rate",
        "elements.rain.effects[2].peak.cutoff: 7200 Hz is at or above 0.45 x the 16000 Hz "
        "sample rate (7200 Hz); set it below 7200 Hz or raise sample_rate",
    ]
    assert check_effect_rates(specs, 22050) == []  # 9 kHz < 9922.5 Hz


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_the_limit_is_045_of_each_rate(sr: int) -> None:
    below = EffectSpec("lowpass", (("cutoff", 0.449 * sr),))
    at = EffectSpec("high_shelf", (("cutoff", 0.45 * sr), ("gain", 3.0), ("q", 0.7)))
    assert check_effect_rates((below,), sr) == []
    [msg] = check_effect_rates((below, at), sr)
    assert msg.startswith(f"effects[1].high_shelf.cutoff: {0.45 * sr:g} Hz")


def test_ensure_finite_names_the_element_the_effects_and_the_time() -> None:
    block = np.zeros((2, 1000), np.float32)
    ensure_finite(block, "rain")  # finite: nothing happens
    block[1, 480] = np.inf
    with pytest.raises(RenderError) as e:
        ensure_finite(block, "rain", start=48000, sample_rate=48000)
    assert str(e.value) == (
        "element rain: non-finite samples (NaN or inf) from 1.01 s; the recording or take "
        "holds them, or the volume or automation is out of range: fix the file or the level")
    block[0, 10] = np.nan
    fx = (parse_effect("reverb", None), parse_effect({"lowpass": {"cutoff": "9 kHz"}}, None))
    with pytest.raises(RenderError) as e:
        ensure_finite(block, "rain", fx)
    assert str(e.value) == (
        "element rain: the effects (reverb -> lowpass) produced non-finite samples (NaN or "
        "inf); check their parameters (a filter frequency near or above half the scene's "
        "sample rate does this) and the element's volume")


def test_a_filter_that_blows_up_stops_the_render_instead_of_writing_inf() -> None:
    sr = 16000
    scene = scene_from_dict({"duration": 2, "sample_rate": sr, "elements": {
        "hiss": {"prompt": "hiss", "loop": True}}})
    blowup = (EffectSpec("lowpass", (("cutoff", 9000.0),)),)  # above Nyquist at 16 kHz
    plan = replace(arrange(scene, {"hiss": 1.0}).elements[0], effects=blowup)
    take = np.random.default_rng(0).normal(0, 0.1, (1, sr)).astype(np.float32)
    mix = Bus(2, 2 * sr, array=np.zeros((2, 2 * sr), np.float32))
    stems: list[np.ndarray] = []
    with pytest.raises(RenderError, match=r"^element hiss: the effects \(lowpass\) produced "
                                          r"non-finite samples \(NaN or inf\) from 0\.0\d s"):
        render_element(plan, [take], sr, 2, 2 * sr, mix, stems.append)
    assert stems == [] and mix.array is not None and np.isfinite(mix.array).all()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_recording_with_nan_is_one_error_line_and_no_files(tmp_path: Path, jobs: str) -> None:
    sr = 48000
    bad = np.full(sr, 0.1, np.float32)
    bad[sr // 2] = np.nan
    wav(tmp_path / "bad.wav", bad, sr)
    wav(tmp_path / "ok.wav", np.full(sr, 0.1, np.float32), sr)
    (tmp_path / "s.yaml").write_text("name: s\nduration: 3 s\nelements:\n"
                                     "  fine: {file: ok.wav, loop: true}\n"
                                     "  broken: {file: bad.wav, at: [1 s]}\n")
    res = CliRunner().invoke(app, ["render", str(tmp_path / "s.yaml"), "--out",
                                   str(tmp_path / "o"), "--jobs", jobs])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1] == (
        f"Error: {tmp_path / 's.yaml'}: element broken: non-finite samples (NaN or inf); the "
        "recording or take holds "
        "them, or the volume or automation is out of range: fix the file or the level")
    assert not (tmp_path / "o" / "s" / "mix.wav").exists()
    # no file for the broken element (a stem finished before it may stay, whole)
    assert [p.name for p in (tmp_path / "o").rglob("*.wav")] in ([], ["fine.wav"])
    assert not list((tmp_path / "o").rglob(".*tmp*"))
