"""The house's contracts that a user can observe: one loudness rule for short sounds wherever a
file is measured on its own, and the typed options behind the public render()."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from wavinfo import WavInfoReader

from soundscape.audio_io import read_audio
from soundscape.dsp.meter import sound_levels
from soundscape.options import GenerationOptions, OutputOptions
from soundscape.pipelines.render import render, render_scenes
from soundscape.scene import load_scene
from tests.conftest import run_cli, wav


def _tick(sr: int, seconds: float) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    return (0.5 * np.sin(2 * np.pi * 1000 * t) * np.hanning(n)).astype(np.float32)[None, :]


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_a_short_sound_reads_its_loudness_while_it_plays(sr: int) -> None:
    """Under one 400 ms gating block BS.1770 has no integrated loudness; the rule measures the
    sound repeated to fill the block (pyloudnorm agrees on the same repetition), a loop as it
    plays, and a long sound as it is."""
    short = _tick(sr, 0.3)
    lufs, peak = sound_levels(short, sr)
    reps = math.ceil(0.4 * sr / short.shape[1]) + 1
    ref = pyloudnorm.Meter(sr).integrated_loudness(np.tile(short, reps).T.astype(np.float64))
    assert math.isfinite(lufs) and lufs == pytest.approx(ref, abs=0.05)
    assert peak == pytest.approx(20 * math.log10(0.5), abs=0.1)
    long = _tick(sr, 2.0)
    ref_long = pyloudnorm.Meter(sr).integrated_loudness(long.T.astype(np.float64))
    assert sound_levels(long, sr)[0] == pytest.approx(ref_long, abs=0.05)
    looped = sound_levels(long, sr, looped=True)[0]
    ref_loop = pyloudnorm.Meter(sr).integrated_loudness(np.tile(long, 2).T.astype(np.float64))
    assert looped == pytest.approx(ref_loop, abs=0.05)
    assert sound_levels(np.zeros((1, 0), np.float32), sr) == (-math.inf, -math.inf)


def test_a_short_pool_one_shot_carries_its_loudness_as_an_sfx_would(tmp_path: Path) -> None:
    """A 0.3 s one-shot exported to a pool had no LUFS in its bext while the same sound in an
    SFX list had one: both follow the one rule now."""
    sr = 48000
    wav(tmp_path / "tick.wav", _tick(sr, 0.3), sr)
    scene = tmp_path / "p.yaml"
    scene.write_text("name: p\nduration: 20 s\nsample_rate: 48000\nelements:\n"
                     "  tick: {file: tick.wav, scatter: {interval: [2 s, 3 s]}}\n")
    code, out = run_cli("render", str(scene), "--export", "pools", "--out", str(tmp_path / "o"))
    assert code == 0, out
    shot_path = tmp_path / "o/p/pools/tick/tick-1.wav"
    shot, got_sr = read_audio(shot_path)
    assert got_sr == sr and shot.shape[1] == int(0.3 * sr)
    bext = WavInfoReader(shot_path).bext
    want_lufs, want_peak = sound_levels(shot, sr)
    assert bext.loudness_value == pytest.approx(want_lufs, abs=0.011)
    assert bext.loudness_value != 327.67  # 0x7FFF would say "not measured"
    assert bext.max_true_peak == pytest.approx(want_peak, abs=0.011)


def test_render_keywords_are_the_options_spelled_out(tmp_path: Path) -> None:
    """The public render() and render_scenes() with the same options write the same files."""
    sr = 22050
    rng = np.random.default_rng(3)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.1, sr * 2), sr)
    scene = tmp_path / "s.yaml"
    scene.write_text("name: s\nduration: 6 s\nsample_rate: 22050\nelements:\n"
                     "  bed: {file: bed.wav, loop: {crossfade: 300 ms}, volume: -6 dB}\n"
                     "master: {loudness: -20 LUFS}\n")
    [a] = render(scene, out=tmp_path / "a", fmt="flac", bit_depth=16, jobs=1, loopable=True)
    [b] = render_scenes([load_scene(scene)], GenerationOptions(),
                        OutputOptions(out=tmp_path / "b", fmt="flac", bit_depth=16, jobs=1,
                                      loopable=True))
    assert a.mix.name == b.mix.name == "mix.flac"
    x, _ = read_audio(a.mix)
    y, _ = read_audio(b.mix)
    assert x.shape == y.shape == (2, 6 * sr) and np.array_equal(x, y)
    assert a.manifest.mix.key == b.manifest.mix.key
