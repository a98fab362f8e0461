"""Fuzzing at render level (issue 14, item 6): random scenes of ``file:`` elements, odd
recordings and tiny durations, rendered through the CLI in-process. Every render ends in exit 0
with a finite mix of the right length, or exit 1 with exactly one ``Error:`` line; never a
traceback, never an "unexpected failure"."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from soundscape.audio_io import read_audio
from soundscape.cli import app
from soundscape.dsp.effects import EFFECTS
from soundscape.units import parse_duration
from tests.conftest import wav

RATES = (8000, 22050, 44100, 48000, 96000)
# Lossy encoders pad to whole codec frames and decoders may keep the priming: a tolerance.
LOSSY_SLACK_FRAMES = 4096


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Odd but valid recordings: mono/stereo/5.1, 8..96 kHz, one frame, silence, full scale."""
    d = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(1)
    t = np.arange(2000) / 8000
    wav(d / "mono8k.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 8000)
    wav(d / "stereo44k.wav", rng.normal(0, 0.2, (2, 4410)), 44100)
    wav(d / "surround48k.wav", rng.normal(0, 0.1, (6, 4800)), 48000)
    wav(d / "oneframe96k.wav", np.array([[0.7]]), 96000)
    wav(d / "silent22k.wav", np.zeros((1, 2205)), 22050)
    wav(d / "fullscale16k.wav", np.sign(np.sin(2 * np.pi * 100 * np.arange(1600) / 16000)) +
        np.zeros((2, 1)), 16000)
    wav(d / "ir.wav", rng.normal(0, 0.3, 480) * np.exp(-np.arange(480) / 60), 48000)
    from soundscape.audio_io import write_audio

    noise = rng.normal(0, 0.3, (2, 2400)).astype(np.float32)
    write_audio(d / "pcm16.flac", noise, 24000, bit_depth=16)
    write_audio(d / "short.ogg", noise, 48000)
    write_audio(d / "short.mp3", noise[:, :300], 44100)
    write_audio(d / "hot.wav", noise * 10, 32000, bit_depth=32)  # float past full scale
    bad = noise[:1].copy()
    bad[0, 100], bad[0, 200] = np.nan, np.inf
    write_audio(d / "nonfinite.wav", bad, 48000, bit_depth=32)  # a float recording gone wrong
    return d


FILES = ("mono8k.wav", "stereo44k.wav", "surround48k.wav", "oneframe96k.wav", "silent22k.wav",
         "fullscale16k.wav", "pcm16.flac", "short.ogg", "short.mp3", "hot.wav",
         "nonfinite.wav")

seconds = st.one_of(st.floats(0, 0.6, allow_nan=False).map(lambda s: round(s, 4)),
                    st.sampled_from([0, 1e-6, "1 ms", "0:00.2", 5]))
level = st.one_of(st.floats(-120, 60).map(lambda d: f"{d:.1f} dB"), st.floats(0, 1e6),
                  st.sampled_from([0, "-inf dB", "0 dB", 1e30, "+200 dB"]))


@st.composite
def effect(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(sorted(EFFECTS)))
    if name == "pitch_shift":  # slow: seconds per call at 96 kHz; one draw in a few
        name = draw(st.sampled_from(["pitch_shift", "gain"]))
    params: dict[str, Any] = {}
    for key, p in EFFECTS[name].params.items():
        if draw(st.booleans()):
            params[key] = draw(st.floats(p.low, p.high, allow_nan=False))
    if EFFECTS[name].needs_ir:
        params["ir"] = "ir.wav"
    return {name: params} if params else name


@st.composite
def element(draw: st.DrawFn) -> dict[str, Any]:
    e: dict[str, Any] = {"file": draw(st.sampled_from(FILES))}
    placement = draw(st.sampled_from(["none", "at", "loop", "loop_args", "scatter"]))
    if placement == "at":
        e["at"] = draw(st.lists(seconds, min_size=1, max_size=4))
    elif placement == "loop":
        e["loop"] = True
    elif placement == "loop_args":
        start = draw(st.floats(0, 0.6).map(lambda s: round(s, 4)))
        loop: dict[str, Any] = {"start": start, "crossfade": draw(seconds)}
        if draw(st.booleans()):
            loop["times"] = draw(st.integers(1, 5))
        elif draw(st.booleans()):
            loop["until"] = start + draw(st.floats(0.001, 1).map(lambda s: round(s, 4)))
        e["loop"] = loop
    elif placement == "scatter":
        lo = draw(st.floats(1e-5, 0.3))
        sc: dict[str, Any] = {"interval": [lo, lo + draw(st.floats(0, 0.3))]} \
            if draw(st.booleans()) else {"density": draw(st.floats(1, 6000))}
        if draw(st.booleans()):
            sc["count"] = draw(st.integers(1, 20))
        sc["level_jitter"] = draw(st.floats(0, 40))
        sc["pan_jitter"] = draw(st.floats(0, 2))
        sc["overlap"] = draw(st.booleans())
        e["scatter"] = sc
    if draw(st.booleans()):
        e["volume"] = draw(level)
    if draw(st.booleans()):
        e["pan"] = draw(st.floats(-1, 1))
    if draw(st.booleans()):
        e["stereo"] = draw(st.sampled_from(["pan", "decorrelate"]))
        e["width"] = draw(st.floats(0, 1))
    e["fade_in"], e["fade_out"] = draw(seconds), draw(seconds)
    e["effects"] = draw(st.lists(effect(), max_size=3))
    e["automation"] = draw(st.lists(st.fixed_dictionaries({"time": seconds, "level": level}),
                                    max_size=4))
    return e


@st.composite
def case(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    n = draw(st.integers(1, 3))
    scene = {
        "name": "fuzz",
        "duration": draw(st.one_of(st.floats(1e-6, 0.5).map(lambda s: round(s, 6)),
                                   st.sampled_from([1e-6, "1 ms", 0.0001, "0:00.3"]))),
        "sample_rate": draw(st.sampled_from(RATES)),
        "channels": draw(st.sampled_from([1, 2])),
        "elements": {f"e{i}": draw(element()) for i in range(n)},
        "master": {"loudness": draw(st.one_of(st.just("off"), st.floats(-70, 0))),
                   "ceiling": draw(st.floats(-20, 0)),
                   "effects": draw(st.lists(effect(), max_size=2))},
    }
    if draw(st.integers(0, 9)) == 0:  # a model: that is not there (file elements need none)
        scene["model"] = "./no-such-model"
    fmt = draw(st.sampled_from(["wav", "flac", "ogg", "mp3"]))
    args = ["--format", fmt]
    depth = draw(st.sampled_from([None, 16, 24, 32]))
    if depth is not None:
        args += ["--bit-depth", str(depth)]
    return scene, args


_runs = itertools.count()


# 40 examples fit CI's minute; SOUNDSCAPE_FUZZ_EXAMPLES=2000 (and a random seed) hunts longer.
EXAMPLES = int(os.environ.get("SOUNDSCAPE_FUZZ_EXAMPLES", "40"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case())
def test_random_file_scenes_render_or_fail_in_one_line(recordings: Path,
                                                       data: tuple[dict[str, Any], list[str]],
                                                       ) -> None:
    scene, args = data
    n = next(_runs)
    path = recordings / f"s{n}.yaml"
    path.write_text(yaml.safe_dump(scene, sort_keys=False))
    out = recordings / f"o{n}"
    res = CliRunner().invoke(app, ["render", str(path), "--out", str(out), "--jobs", "1", *args])
    text = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"{type(res.exception).__name__}: {res.exception}\n{text}"
    assert "Traceback" not in text and "unexpected failure" not in text, text
    if res.exit_code == 1:
        errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
        # one line, or one per problem of an invalid scene file, each at its file:line
        assert len(errors) == 1 or all(ln.startswith(f"Error: {path}:") for ln in errors), text
        # and every line says which scene it is about: its file, or its name
        assert all(ln.startswith((f"Error: {path}", "Error: fuzz")) for ln in errors), text
        assert not (out / "fuzz" / f"mix.{args[1]}").exists()
        return
    assert res.exit_code == 0, text
    mix, sr = read_audio(out / "fuzz" / f"mix.{args[1]}")
    frames = int(round(parse_duration(scene["duration"]) * scene["sample_rate"]))
    assert sr == scene["sample_rate"] and mix.shape[0] == scene["channels"]
    if args[1] in ("wav", "flac"):
        assert mix.shape[1] == frames
    else:
        assert abs(mix.shape[1] - frames) <= LOSSY_SLACK_FRAMES, (mix.shape, frames)
    assert np.isfinite(mix).all() and math.isfinite(float(np.max(np.abs(mix), initial=0.0)))


# Crashes the fuzzer found, each pinned by a test of its own.


def test_a_scene_shorter_than_one_sample_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"  # rendered an empty mix.wav that no decoder reads back
    p.write_text("name: s\nduration: 1e-6\nsample_rate: 8000\nelements: {x: {prompt: y}}\n")
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert (res.exit_code, res.output.strip()) == (1, f"Error: {p}:1: duration 1e-06 s is "
                                                   f"shorter than one sample at 8000 Hz; give "
                                                   f"at least 0.000125 s")


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_a_filter_cutoff_above_half_the_rate_is_refused(tmp_path: Path, rate: int) -> None:
    p = tmp_path / "s.yaml"  # pedalboard's filter there is unstable: inf, then a 240 dB limiter
    p.write_text(f"name: s\nduration: 1\nsample_rate: {rate}\nelements: {{x: {{prompt: y}}}}\n"
                 f"master: {{effects: [{{highpass: {{cutoff: {rate // 2 + 30}}}}}]}}\n")
    res = CliRunner().invoke(app, ["validate", str(p)])
    limit = 0.45 * rate  # effects.check_effect_rates: at or above 0.45 x the rate
    assert (res.exit_code, res.output.strip()) == (
        1, f"Error: {p}:5: master.effects[0].highpass.cutoff: {rate // 2 + 30:g} Hz is at or "
        f"above 0.45 x the {rate} Hz sample rate ({limit:g} Hz); set it below {limit:g} Hz or "
        f"raise sample_rate")


def test_a_level_past_48_db_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"  # 1e30 linear (+600 dB), twice, overflowed float32 to infinity
    p.write_text("name: s\nduration: 1\nelements:\n  x: {prompt: y, automation: "
                 "[{time: 0, level: 1.0e+30}]}\n")
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert (res.exit_code, res.output.strip()) == (
        1, f"Error: {p}:4: elements.x.automation[0].level: 1e+30 is +600.00 dB, more than the "
        f"+48 dB a level may add; write e.g. '+6 dB' or 2")


def test_a_one_frame_recording_looped_for_ten_minutes_is_refused_at_once(tmp_path: Path) -> None:
    import time

    wav(tmp_path / "one.wav", np.array([[0.5]]), 48000)  # mixed 29 M loop repeats (minutes)
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nduration: 10:00\nelements:\n  x: {file: one.wav, loop: true}\n")
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["render", str(p), "--out", str(tmp_path / "o")])
    assert time.perf_counter() - t0 < 10
    assert (res.exit_code, res.output.strip()) == (
        1, f"Error: {p}: element x: loop: its take is 0.02 ms (1 frame at 48000 Hz), less than "
        f"the 10 ms a loop needs; use a longer recording or take, or play it once with at: "
        f"instead of loop:")
    assert not (tmp_path / "o").exists()


def test_errors_found_at_render_time_name_the_scene_file(tmp_path: Path) -> None:
    from soundscape.audio_io import write_audio

    bad = np.zeros((1, 4800), np.float32)
    bad[0, 100] = np.nan
    write_audio(tmp_path / "nan.wav", bad, 48000, bit_depth=32)
    cases = {
        "model": ("name: m\nduration: 1\nmodel: ./gone\nelements:\n  x: {prompt: rain}\n",
                  f"model '{tmp_path}/gone' is neither a directory nor a Hugging Face id like "
                  f"'facebook/audiogen-medium' nor a short name (audiogen-medium, "
                  f"stable-audio-open-1.0, stable-audio-open-small); give one of those"),
        "nan": ("name: n\nduration: 1\nelements:\n  x: {file: nan.wav, at: 0}\n",
                "element x: non-finite samples (NaN or inf); the recording or take holds them, "
                "or the volume or automation is out of range: fix the file or the level"),
    }
    for name, (text, message) in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        res = CliRunner().invoke(app, ["render", str(p), "--out", str(tmp_path / "o")])
        assert (res.exit_code, res.output.strip()) == (1, f"Error: {p}: {message}"), res.output
