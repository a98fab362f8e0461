"""Scene format: every error kind with its exact message, variants, schema, fuzzing."""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from soundscape.cli import app
from soundscape.errors import SceneError
from soundscape.scene import derive_seed, json_schema, load_all, load_scene, scene_from_dict

ROOT = Path(__file__).resolve().parents[1]
SCENES = sorted((ROOT / "scenes").glob("*.yaml"))

BASE = """\
name: t
duration: 30 s
elements:
  rain:
    prompt: rain
    volume: -6 dB
    loop: true
"""


MINIMAL = """\
name: t
duration: 30 s
elements:
  rain:
    prompt: rain
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> list[str]:
    p = write(tmp_path, text)
    with pytest.raises(SceneError) as e:
        load_scene(p)
    return [line.replace(str(p), "S") for line in e.value.lines]


def test_units_are_parsed_once(tmp_path: Path) -> None:
    s = load_scene(write(tmp_path, BASE + "    fade_in: 500 ms\n    pan: left\n"))
    e = s.elements["rain"]
    assert s.duration == 30.0 and e.volume == -6.0 and e.fade_in == 0.5 and e.pan == -1.0
    assert e.loop is not None and e.loop.crossfade == 1.0
    lin = scene_from_dict({"duration": "1:30", "elements": {"a": {"prompt": "x", "volume": 0.5}}})
    assert lin.duration == 90.0
    assert lin.elements["a"].volume == pytest.approx(-6.0206, abs=1e-4)


@pytest.mark.parametrize("snippet,expected", [
    ("    volume: -6 dbb\n",
     "S:6: elements.rain.volume: '-6 dbb' is not a level; write e.g. '-6 dB' or 0.5"),
    ("    pan: 3\n", "S:6: elements.rain.pan: 3 is outside -1..1; -1 is hard left, 1 is hard "
                     "right"),
    ("    volumme: -3 dB\n",
     "S:6: elements.rain.volumme: unknown key 'volumme'; did you mean 'volume'? allowed: at, "
     "automation, cfg_coef, duration, effects, fade_in, fade_out, file, loop, mute, pan, prompt, "
     "scatter, seed, stereo, temperature, top_k, top_p, variations, volume, width"),
    ("    effects: [{reverbb: {}}]\n",
     "S:6: elements.rain.effects[0]: unknown effect 'reverbb'; did you mean 'reverb'? valid "
     "effects: bitcrush, chorus, compressor, convolution, delay, distortion, gain, high_shelf, "
     "highpass, low_shelf, lowpass, noise_gate, peak, phaser, pitch_shift, reverb"),
    ("    effects: [{lowpass: {cutof: 8 kHz}}]\n",
     "S:6: elements.rain.effects[0]: lowpass has no parameter 'cutof'; did you mean 'cutoff'? "
     "valid parameters: cutoff"),
    ("    effects: [{lowpass: {cutoff: 8 kHzz}}]\n",
     "S:6: elements.rain.effects[0]: lowpass.cutoff: '8 kHzz' is not a frequency; write e.g. "
     "8000, '8 kHz' or '500 Hz'"),
    ("    fade_in: -2 s\n", "S:6: elements.rain.fade_in: '-2 s' is negative; durations and "
                          "times are >= 0"),
    ("    loop: true\n    at: 5 s\n",
     "S:4: elements.rain: give one placement, not at and loop; use two elements for two "
     "behaviours"),
    ("    file: missing.wav\n",
     "S:6: elements.rain.file: file 'missing.wav' not found (looked at D/missing.wav); give a "
     "path relative to the scene file"),
])
def test_error_messages(tmp_path: Path, snippet: str, expected: str) -> None:
    lines = error_of(tmp_path, MINIMAL + snippet)
    assert [line.replace(str(tmp_path), "D") for line in lines] == [expected]


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE + "    volume: -3 dB\n") == [
        "S:8: duplicate key 'volume' (first defined on line 6); remove one of them"]


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    lines = error_of(tmp_path, BASE + "    prompt2: !!python/object/apply:os.system [ls]\n")
    assert len(lines) == 1 and lines[0].startswith("S:8: cannot read this value")


def test_missing_and_scene_level_errors(tmp_path: Path) -> None:
    assert error_of(tmp_path, "name: t\nelements: {a: {prompt: x}}\n") == [
        "S:1: duration: required field missing; add 'duration: ...'"]
    assert error_of(tmp_path, "duration: 10\nelements: {a: {}}\n") == [
        "S:2: elements.a: give exactly one of prompt: (text to generate) or file: (a recording)"]
    assert error_of(tmp_path, "- a\n- b\n") == [
        "S:1: the scene must be a mapping of keys such as name, duration and elements, not list"]
    assert error_of(tmp_path, "duration: [1\n")[0].startswith("S:2: invalid YAML")


def test_variant_errors_name_the_variant_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "variants:\n  night:\n    elements:\n      rain: {volume: loud}\n")
    load_scene(p)
    with pytest.raises(SceneError) as e:
        load_scene(p, "night")
    assert e.value.lines == [f"{p}:11: variant 'night': elements.rain.volume: 'loud' is not a "
                             f"level; write e.g. '-6 dB' or 0.5"]
    with pytest.raises(SceneError, match="unknown variant 'nite'; did you mean 'night'"):
        load_scene(p, "nite")


def test_variants_merge_remove_add(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + """\
  thunder: {prompt: thunder, at: [5 s]}
variants:
  night:
    master: {loudness: -23 LUFS}
    elements:
      rain: {volume: -14 dB}
      thunder: null
      crickets: {prompt: crickets, loop: true}
""")
    base, night = load_all(p)
    assert set(base.elements) == {"rain", "thunder"}
    assert set(night.elements) == {"rain", "crickets"}
    assert night.elements["rain"].volume == -14.0
    assert night.elements["rain"].loop == base.elements["rain"].loop  # untouched fields stay
    assert night.master.loudness == -23.0 and base.master.loudness == -18.0
    assert night.variant == "night" and base.variant is None


def test_seed_derivation_is_per_name() -> None:
    a = scene_from_dict({"duration": 5, "seed": 3, "elements": {"x": {"prompt": "p"}}})
    b = scene_from_dict({"duration": 5, "seed": 3,
                         "elements": {"new": {"prompt": "q"}, "x": {"prompt": "p"}}})
    assert a.element_seed("x") == b.element_seed("x") == derive_seed(3, "x")
    assert derive_seed(4, "x") != derive_seed(3, "x")


@pytest.mark.parametrize("path", SCENES, ids=lambda p: p.stem)
def test_shipped_scenes_validate_and_match_schema(path: Path) -> None:
    scenes = load_all(path)
    assert len(scenes) >= 2  # every shipped scene has a variant
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


@pytest.mark.parametrize("bad", [
    {"duration": 10},
    {"duration": 10, "elements": {"a": {"prompt": "x", "volumme": 1}}},
    {"duration": 10, "elements": {"a": {"prompt": "x", "effects": [{"reverbb": {}}]}}},
    {"duration": 10, "elements": {"a": {"prompt": "x", "channels": 3}}},
])
def test_schema_rejects_bad_scenes(bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", *map(str, SCENES)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("ok  ") == sum(len(load_all(p)) for p in SCENES)
    bad = write(tmp_path, BASE + "    pan: 3\n")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: {bad}:8: elements.rain.pan: 3 is outside -1..1; -1 is hard left, 1 is hard "
        f"right"]
    assert "Traceback" not in res.output


def test_cli_schema_is_json() -> None:
    res = CliRunner().invoke(app, ["schema"])
    schema = json.loads(res.output)
    assert "elements" in schema["properties"] and res.exit_code == 0


def test_validate_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from soundscape.cli import app; "
            f"r = CliRunner().invoke(app, ['validate', r'{SCENES[0]}']); assert r.exit_code == 0;"
            "print(sorted(m for m in ('torch', 'audiocraft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "duration", "elements", "rain", "prompt", "volume", "loop",
                         "scatter", "at", "effects", "master", "variants", "x", "pan"]),
        children, max_size=5),
    max_leaves=20)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(data=yaml_values)
def test_arbitrary_values_only_raise_scene_error(tmp_path: Path, data: object) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(data))
    try:
        load_all(p)
    except SceneError as e:
        assert all(line.startswith(str(p)) for line in e.lines)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_only_raises_scene_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    with contextlib.suppress(SceneError):
        load_scene(p)
