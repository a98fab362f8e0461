"""A loopable mix (`--loopable`, `master: {loopable: ...}`): its end flows into its start.
Played twice end to end there is no step at the wrap larger than the steps inside, the level
holds across it, tails that ring past the end are heard at the start, and the limiter and
true peak hold across the wrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundscape.audio_io import read_audio
from soundscape.cli import app
from soundscape.dsp.meter import measure
from soundscape.pipelines.render import render
from soundscape.scene import load_scene
from tests.conftest import wav


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-30)


def windows_db(x: np.ndarray, n: int) -> np.ndarray:
    k = x.shape[1] // n
    return np.array([rms_db(x[:, i * n:(i + 1) * n]) for i in range(k)])


def wrap_step_ok(y: np.ndarray) -> tuple[float, float]:
    """(the step across the wrap, the largest step inside), per the worst channel."""
    inside = float(np.abs(np.diff(y, axis=1)).max())
    return float(np.abs(y[:, 0] - y[:, -1]).max()), inside


BED = """name: bed
duration: 20 s
sample_rate: {sr}
master: {{loudness: -20 LUFS, loopable: 2 s}}
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 500 ms}}, fade_in: 2 s, fade_out: 3 s}}
"""


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_a_loopable_bed_keeps_its_level_across_the_wrap(tmp_path: Path, sr: int) -> None:
    rng = np.random.default_rng(0)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.1, 3 * sr), sr)
    (tmp_path / "s.yaml").write_text(BED.format(sr=sr))
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o")
    y, got_sr = read_audio(res.mix)
    assert got_sr == sr and y.shape == (2, 20 * sr)
    step, inside = wrap_step_ok(y)
    assert step <= inside
    n = sr // 20  # 50 ms
    body = float(np.median(windows_db(y, n)))
    across = np.concatenate([y[:, -sr:], y[:, :sr]], axis=1)  # a second either side
    levels = windows_db(across, n)
    assert np.abs(levels - body).max() <= 0.5, levels - body
    # the element's fades at the scene's edges are dropped: no dip at the start or the end
    assert abs(windows_db(y[:, :n], n)[0] - body) <= 0.5
    assert abs(windows_db(y[:, -n:], n)[0] - body) <= 0.5


TAIL = """name: tail
duration: 12 s
master: {{loudness: -20 LUFS{loop}}}
elements:
  boom: {{file: boom.wav, at: [11 s], effects: [{{reverb: {{room_size: 0.9, wet: 0.6}}}}]}}
"""


def test_what_rings_past_the_end_is_heard_at_the_start(tmp_path: Path) -> None:
    sr = 48000
    t = np.arange(2 * sr) / sr
    wav(tmp_path / "boom.wav", 0.5 * np.sin(2 * np.pi * 110 * t) * np.exp(-t * 1.5), sr)
    (tmp_path / "plain.yaml").write_text(TAIL.format(loop=""))
    (tmp_path / "loop.yaml").write_text(TAIL.format(loop=", loopable: 2 s"))
    [plain] = render(tmp_path / "plain.yaml", out=tmp_path / "p")
    [loop] = render(tmp_path / "loop.yaml", out=tmp_path / "l")
    a, _ = read_audio(plain.mix)
    b, _ = read_audio(loop.mix)
    assert a.shape == b.shape == (2, 12 * sr)
    assert rms_db(a[:, : sr // 2]) < -100  # nothing plays at the start of the plain mix
    assert rms_db(b[:, : sr // 2]) > -45  # the loop's start carries the boom's ring
    step, inside = wrap_step_ok(b)
    assert step <= inside
    stem, _ = read_audio(loop.stems["boom"])
    assert stem.shape == (2, 12 * sr)  # the stem is the scene's length


def test_the_limiter_and_true_peak_hold_across_the_wrap(tmp_path: Path) -> None:
    sr = 48000
    rng = np.random.default_rng(1)
    burst = np.zeros(sr, np.float32)
    burst[:2400] = rng.normal(0, 0.9, 2400)  # a loud burst at the very start of the take
    wav(tmp_path / "burst.wav", burst, sr)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.05, 2 * sr), sr)
    (tmp_path / "s.yaml").write_text(
        # heavy limiting allowed (master.max_limiting), so the duck ahead of the burst is deep
        "name: s\nduration: 10 s\nmaster: {loudness: -14 LUFS, ceiling: -1 dBTP, loopable: 1 s, "
        "max_limiting: 40 dB}\n"
        "elements:\n  bed: {file: bed.wav, loop: true}\n  hit: {file: burst.wav, at: [0 s]}\n")
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o")
    y, _ = read_audio(res.mix, )
    twice = np.concatenate([y, y], axis=1)
    assert measure(twice, sr).true_peak_db <= -1.0 + 0.05
    assert res.manifest.mix.limiter_reduction_db > 3.0  # the burst was limited
    # the limiter looked ahead across the wrap: the end is already ducked for the burst
    assert rms_db(y[:, -240:]) < rms_db(y[:, -sr // 2:-sr // 4]) - 1.0


def test_the_flag_and_the_scene_option_make_the_same_mix(tmp_path: Path) -> None:
    sr = 48000
    wav(tmp_path / "bed.wav", np.random.default_rng(2).normal(0, 0.1, 3 * sr), sr)
    (tmp_path / "s.yaml").write_text(BED.format(sr=sr).replace(", loopable: 2 s", ""))
    (tmp_path / "t.yaml").write_text(BED.format(sr=sr))
    runner = CliRunner()
    r = runner.invoke(app, ["render", str(tmp_path / "s.yaml"), "--loopable", "--out",
                            str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    [res] = render(tmp_path / "t.yaml", out=tmp_path / "b")
    a, _ = read_audio(tmp_path / "a/bed/mix.wav")
    b, _ = read_audio(res.mix)
    assert np.array_equal(a, b)
    # without the flag the same scene is a different (plain) mix: faded in from silence
    [plain] = render(tmp_path / "s.yaml", out=tmp_path / "c")
    c, _ = read_audio(plain.mix)
    assert rms_db(c[:, :480]) < rms_db(a[:, :480]) - 20


def test_a_loopable_scene_too_short_for_its_crossfade_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: s\nduration: 3 s\nmaster: {loopable: 2 s}\n"
                                     "elements:\n  a: {prompt: rain, loop: true}\n")
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("Error: ")
    assert "master.loopable: a 2 s crossfade needs a scene of at least 4 s (this one is 3 s)" \
        in r.output
    (tmp_path / "u.yaml").write_text("name: u\nduration: 3 s\n"
                                     "elements:\n  a: {prompt: rain, loop: true}\n")
    r = CliRunner().invoke(app, ["render", str(tmp_path / "u.yaml"), "--loopable"])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: --loopable: u lasts 3 s; a loopable mix crossfades its end into its start over "
        "2 s and needs at least 4 s"]
    assert load_scene(tmp_path / "u.yaml").master.loopable is None


@pytest.mark.parametrize("sr", [22050, 48000])
def test_a_tonal_bed_keeps_its_level_across_the_wrap(tmp_path: Path, sr: int) -> None:
    """A sine bed whose end and start overlap in phase summed to +3 dB with equal-power fades;
    the wrap's fades are normalised by the correlation, as the loop's own seams are."""
    t = np.arange(3 * sr) / sr
    wav(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 220 * t), sr)
    (tmp_path / "s.yaml").write_text(
        f"name: s\nduration: 10 s\nsample_rate: {sr}\n"
        "master: {loudness: -20 LUFS, loopable: 2 s}\n"
        "elements:\n  tone: {file: tone.wav, loop: {crossfade: 500 ms}}\n")
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o")
    y, _ = read_audio(res.mix)
    n = sr // 20
    levels = windows_db(y, n)
    body = float(np.median(levels))
    assert np.abs(levels - body).max() <= 0.5, levels[:45] - body


def test_a_one_shot_longer_than_the_wrap_fades_out_over_it_and_says_so(tmp_path: Path) -> None:
    sr = 48000
    t = np.arange(5 * sr) / sr
    wav(tmp_path / "boom.wav", 0.5 * np.sin(2 * np.pi * 110 * t), sr)
    (tmp_path / "s.yaml").write_text(
        "name: s\nduration: 10 s\nmaster: {loudness: -20 LUFS, loopable: 2 s}\n"
        "elements:\n  boom: {file: boom.wav, at: [9 s]}\n")
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o")
    y, _ = read_audio(res.mix)
    # heard at the start (the second past the end), faded to nothing by the wrap's end
    assert rms_db(y[:, : sr // 10]) > -30
    assert rms_db(y[:, 2 * sr - sr // 100: 2 * sr]) < rms_db(y[:, : sr // 10]) - 30
    step, inside = wrap_step_ok(y[:, : 2 * sr + 100])
    assert float(np.abs(np.diff(y[:, 2 * sr - 200: 2 * sr + 200])).max()) <= inside
    [w] = [w for w in res.warnings if w.element == "boom"]
    assert w.message == ("boom at 9.0 s + 5.0 s rings past the loop's 2.0 s wrap; faded out "
                         "over it, 3.0 s")
