"""Mixer and master on synthetic signals whose answers are known in advance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from soundscape.arrange import LoopRun, arrange
from soundscape.audio_io import read_audio
from soundscape.dsp.stereo import pan_gains, to_channels
from soundscape.master import integrated_loudness, limit
from soundscape.pipelines.render import render
from soundscape.scene import load_scene, scene_from_dict
from tests.conftest import wav
from tests.oracles import master, render_loop


def tp8(x: np.ndarray) -> float:
    """Independent true-peak reference: 8x polyphase oversampling."""
    return 20 * math.log10(float(np.abs(resample_poly(x.astype(np.float64), 8, 1, axis=1)).max()))


def sine(freq: float, seconds: float, sr: int, dbfs: float, ch: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.tile(10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t), (ch, 1)).astype(np.float32)


@pytest.mark.parametrize("case,levels,expected", [
    (1, [(-23, 20)], -23.0),
    (2, [(-33, 20)], -33.0),
    (3, [(-36, 10), (-23, 60), (-36, 10)], -23.0),
    (4, [(-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)], -23.0),
    (5, [(-26, 20), (-20, 20.1), (-26, 20)], -23.0),
])
def test_ebu_tech_3341_cases(case: int, levels: list, expected: float) -> None:
    sr = 48000
    x = np.concatenate([sine(1000, s, sr, db) for db, s in levels], axis=1)
    assert integrated_loudness(x, sr) == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("target,ceiling", [(-16.0, -1.0), (-9.0, -1.0), (-23.0, -2.0)])
@pytest.mark.parametrize("material", ["square", "clipped_noise", "transients"])
def test_master_hits_target_under_ceiling(material: str, target: float, ceiling: float) -> None:
    sr = 48000
    rng = np.random.default_rng(1)
    n = sr * 8
    if material == "square":
        t = np.arange(n) / sr
        x = np.sign(np.sin(2 * np.pi * 997 * t))[None].repeat(2, 0)
    elif material == "clipped_noise":
        x = np.clip(rng.normal(0, 1.0, (2, n)), -1, 1)
    else:
        x = rng.normal(0, 0.01, (2, n))
        x[:, :: sr // 4] = 1.0  # full-scale clicks four times a second
    x = x.astype(np.float32)
    y, report = master(x, sr, target, ceiling)
    assert tp8(y) <= ceiling + 0.1
    # every one of these targets is reachable under its ceiling: no note, and the level is hit
    assert report.warnings == ()
    assert integrated_loudness(y, sr) == pytest.approx(target, abs=0.5)
    assert report.output_lufs == pytest.approx(integrated_loudness(y, sr), abs=0.01)


def test_master_says_when_the_ceiling_stops_the_target() -> None:
    sr = 48000
    x = np.clip(np.random.default_rng(1).normal(0, 1.0, (2, sr * 8)), -1, 1).astype(np.float32)
    y, report = master(x, sr, -1.0, -1.0)  # -1 LUFS of noise under a -1 dBTP ceiling: no
    got = integrated_loudness(y, sr)
    assert got < -1.5 and tp8(y) <= -0.9
    [w] = report.warnings
    assert w.message == (f"reached {got:.1f} LUFS, not -1.0: the ceiling of -1.0 dBTP limits "
                         f"{report.limiter_reduction_db:.1f} dB; lower the target or raise the "
                         f"ceiling")
    assert (w.stage, w.old, w.new) == ("master", -1.0, pytest.approx(got, abs=0.01))


def test_limiter_does_not_hard_clip() -> None:
    sr = 48000
    x = sine(100, 2, sr, 0.0) * 2.0  # +6 dB over full scale
    y, reduction = limit(x, sr, -1.0)
    assert reduction > 6.0 and tp8(y) <= -0.9
    # A limiter applies a smooth gain, so y / x barely moves from sample to sample; a clipper
    # flattens each crest, changing y / x by about 1e-2 per sample around it.
    steady = slice(sr // 5, sr * 9 // 5)
    xs, ys = x[0, steady], y[0, steady]
    loud = np.abs(xs) > 0.2
    ratio = ys[loud] / xs[loud]
    assert np.max(np.abs(np.diff(ratio))) < 1e-4
    assert ratio.max() / ratio.min() < 1.01


def test_pan_law_is_constant_power() -> None:
    for pan in np.linspace(-1, 1, 9):
        left, right = pan_gains(float(pan))
        assert left**2 + right**2 == pytest.approx(1.0)
    mono = np.ones((1, 4), np.float32)
    st = to_channels(mono, 0.0, 2)
    assert st[0, 0] == pytest.approx(10 ** (-3.0103 / 20), abs=1e-4)
    assert to_channels(mono, -1.0, 2)[1, 0] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_loop_seam_is_continuous_and_keeps_rms(sr: int, channels: int) -> None:
    rng = np.random.default_rng(3)
    take = rng.normal(0, 0.1, (channels, sr * 3)).astype(np.float32)
    run = LoopRun("x", 0, 0.0, 10.0, None, 0.5, 0.0, 0.0, 0.0)
    out = render_loop(take, run, sr, sr * 10)
    assert out.shape == (channels, sr * 10)
    w = sr // 10
    blocks = out.mean(axis=0)[: sr * 10 // w * w].reshape(-1, w)
    rms_db = 20 * np.log10(np.sqrt((blocks**2).mean(axis=1)))
    assert np.ptp(rms_db) < 2.0  # within +/- 1 dB everywhere, seams included
    # A seam of two equal sines is smooth whatever their phases, so a slope bound cannot fail:
    # a seam out of phase shows as a dip in level over the crossfade. 441.3 Hz has no whole
    # period in frames at any rate, so only a seam placed to the sample stays level.
    t = np.arange(sr * 3) / sr
    tone = np.tile(0.5 * np.sin(2 * np.pi * 441.3 * t), (channels, 1)).astype(np.float32)
    looped = render_loop(tone, run, sr, sr * 10)
    w = sr // 20
    power = (looped.astype(np.float64) ** 2).mean(axis=0)
    level = 10 * np.log10(np.convolve(power, np.ones(w) / w, mode="valid")[:: sr // 100])
    assert np.abs(level - 20 * np.log10(0.5 / math.sqrt(2))).max() < 0.5


def _file_scene(tmp_path: Path, extra: str = "", master: str = "loudness: off, ceiling: 0") \
        -> Path:
    sr_in = 44100
    click = np.zeros(sr_in // 10, np.float32)
    click[0] = 0.5
    wav(tmp_path / "click.wav", click, sr_in)
    wav(tmp_path / "tone.wav", sine(440, 1.0, 22050, -20, ch=1)[0], 22050)
    scene = tmp_path / "files.yaml"
    scene.write_text(f"""\
name: files
duration: 4 s
sample_rate: 48000
elements:
  click: {{file: click.wav, at: [1.25 s, 2.5 s], pan: -1}}
  tone: {{file: tone.wav, volume: -6 dB, loop: {{crossfade: 100 ms}}, pan: 1}}
{extra}master: {{{master}}}
""")
    return scene


def test_file_scene_renders_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    scene = _file_scene(tmp_path)
    code = ("import sys, soundscape; soundscape.render(sys.argv[1], out=sys.argv[2]); "
            "print(sorted(m for m in ('torch', 'audiocraft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(scene), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "out/files/mix.wav").is_file()


def test_clicks_land_on_exact_samples_and_stems_sum_to_mix(tmp_path: Path) -> None:
    scene = _file_scene(tmp_path)
    [res] = render(scene, out=tmp_path / "out", bit_depth=32)
    sr = 48000
    click, _ = read_audio(res.stems["click"])
    tone, _ = read_audio(res.stems["tone"])
    mix, mix_sr = read_audio(res.mix)
    assert mix_sr == sr and mix.shape == (2, 4 * sr)
    onsets = np.nonzero(np.abs(click[0]) > 0.1)[0]
    assert round(1.25 * sr) in onsets and round(2.5 * sr) in onsets
    assert onsets.min() >= round(1.25 * sr) - 1  # resampling ringing stays below 0.1
    assert np.abs(click[1]).max() < 1e-6  # hard left
    assert np.abs(tone[0]).max() < 1e-6  # hard right
    # -20 dBFS sine at -6 dB, panned hard right: peak 10**(-26/20)
    assert np.abs(tone[1]).max() == pytest.approx(10 ** (-26 / 20), rel=0.02)
    np.testing.assert_allclose(click + tone, mix, atol=1e-5)


def test_manifest_records_placements_and_levels(tmp_path: Path) -> None:
    import json

    [res] = render(_file_scene(tmp_path, master="loudness: -20 LUFS"), out=tmp_path / "o")
    m = json.loads(res.manifest_path.read_text())
    assert m["mix"]["loudness_lufs"] == pytest.approx(-20, abs=0.5)
    assert m["mix"]["true_peak_dbtp"] <= -0.9
    click = next(e for e in m["elements"] if e["element"] == "click")
    assert [p["start_s"] for p in click["placements"]] == [1.25, 2.5]
    assert click["true_peak_dbtp"] is not None and m["versions"]["soundscape"]


def test_scatter_respects_interval_and_seed() -> None:
    def plan(seed: int) -> list[float]:
        s = scene_from_dict({"duration": 300, "seed": seed, "elements": {"drip": {
            "prompt": "drip", "scatter": {"interval": ["2 s", "5 s"], "level_jitter": 3}}}})
        return [c.start_s for c in arrange(s, {"drip": 1.0}).elements[0].clips]

    a = plan(1)
    gaps = np.diff(a)
    assert len(a) > 50 and gaps.min() >= 2.0 - 1e-9 and gaps.max() <= 5.0 + 1e-9
    assert a == plan(1) and a != plan(2)


def test_cut_placements_warn_with_old_and_new_length() -> None:
    s = scene_from_dict({"duration": 60, "elements": {"thunder": {"prompt": "t", "at": 58}}})
    arr = arrange(s, {"thunder": 5.0})
    assert arr.elements[0].clips[0].length_s == pytest.approx(2.0)
    [w] = arr.warnings
    assert w.message == "thunder at 58.0 s + 5.0 s exceeds the 60.0 s scene; trimmed to 2.0 s"
    assert (w.stage, w.element, w.old, w.limit, w.new) == ("arrange", "thunder", 5.0, 2.0, 2.0)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_output_formats(tmp_path: Path, fmt: str) -> None:
    [res] = render(_file_scene(tmp_path), out=tmp_path / "o", fmt=fmt)
    audio, sr = read_audio(res.mix)
    assert sr == 48000 and abs(audio.shape[1] - 4 * sr) < 2000  # mp3/ogg pad a little
    assert not list((tmp_path / "o").rglob(".*tmp*"))


def test_reverb_tail_rings_past_the_clip(tmp_path: Path) -> None:
    scene = _file_scene(tmp_path, extra="")
    text = scene.read_text().replace("pan: -1}", "pan: -1, effects: [{reverb: {room_size: 0.9, "
                                                 "wet: 0.8, dry: 0}}]}")
    scene.write_text(text)
    load_scene(scene)
    [res] = render(scene, out=tmp_path / "o")
    click, sr = read_audio(res.stems["click"])
    after = click[:, int(2.6 * sr):int(3.0 * sr)]  # the clip ended at 2.6 s
    assert np.abs(after).max() > 1e-3
