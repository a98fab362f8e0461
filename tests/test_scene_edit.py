"""Writing one value back into a scene file: the text changes by exactly one line.

``takes --keep`` (base and variant elements) and the studio's volume, pan and mute go through
``scene.edit``; every test diffs the file's text, on scenes with comments, flow lists, nulls,
blank lines and long wrapped prompts.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundscape.cli import app
from soundscape.errors import SceneError
from soundscape.scene import load_scene
from soundscape.scene.edit import set_scalar

SCENE = """\
# A hand-written scene: every layout quirk a round trip through a YAML library would undo.
name: quirks
duration: 20 s   # short
sample_rate: 22050

elements:
  rain:
    prompt: steady rain on a window, soft and even, no thunder, recorded close to the glass
      with a little room, long and wrapped over two lines by hand
    volume: "-6 dB"      # quoted on purpose
    loop: {crossfade: 1.5 s}
    effects: [{highpass: {cutoff: 120 Hz}}, {lowpass: {cutoff: 9 kHz}}]

  cups:
    prompt: a ceramic cup placed on a saucer
    duration: 2 s
    seed: 11    # the good one
    scatter: {interval: [5 s, 14 s]}
    automation:
    - {time: 0 s, level: 0 dB}
    - {time: 10 s, level: -3 dB}
    top_k: null

  hum: {prompt: fridge hum, volume: -20 dB, at: [0 s]}

variants:
  night:
    elements:
      owl:
        prompt: an owl hooting far away
        at: 3 s

      cups: {volume: -30 dB}
"""


def changed(before: str, after: str) -> list[str]:
    """The lines removed and added, as difflib prints them."""
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:2] in ("- ", "+ ")]


def test_replace_a_value_keeps_the_line_and_its_comment() -> None:
    after = set_scalar(SCENE, ("elements", "cups", "seed"), "42")
    assert changed(SCENE, after) == ["-     seed: 11    # the good one",
                                     "+     seed: 42    # the good one"]


def test_quoted_value_is_replaced_in_place() -> None:
    after = set_scalar(SCENE, ("elements", "rain", "volume"), "-3.5 dB")
    assert changed(SCENE, after) == ['-     volume: "-6 dB"      # quoted on purpose',
                                     "+     volume: -3.5 dB      # quoted on purpose"]
    assert load_scene_text(after).elements["rain"].volume == pytest.approx(-3.5)


def test_missing_key_is_one_line_after_the_last_entry() -> None:
    after = set_scalar(SCENE, ("elements", "rain", "seed"), "5")
    assert changed(SCENE, after) == ["+     seed: 5"]
    lines = after.splitlines()
    # after the flow list that ends the element, before the blank line that separates it
    assert lines[lines.index("    seed: 5") - 1].startswith("    effects: [")
    assert lines[lines.index("    seed: 5") + 1] == ""


def test_missing_key_after_a_block_list_and_a_null() -> None:
    after = set_scalar(SCENE, ("elements", "cups", "pan"), "-0.25")
    assert changed(SCENE, after) == ["+     pan: -0.25"]
    assert "    top_k: null\n    pan: -0.25\n" in after


def test_flow_mapping_gets_the_key_inside_its_braces() -> None:
    after = set_scalar(SCENE, ("elements", "hum", "seed"), "9")
    assert changed(SCENE, after) == [
        "-   hum: {prompt: fridge hum, volume: -20 dB, at: [0 s]}",
        "+   hum: {prompt: fridge hum, volume: -20 dB, at: [0 s], seed: 9}"]
    after = set_scalar(SCENE, ("variants", "night", "elements", "cups", "seed"), "3")
    assert changed(SCENE, after) == ["-       cups: {volume: -30 dB}",
                                     "+       cups: {volume: -30 dB, seed: 3}"]


def test_a_variant_only_element() -> None:
    after = set_scalar(SCENE, ("variants", "night", "elements", "owl", "seed"), "77")
    assert changed(SCENE, after) == ["+         seed: 77"]
    assert "        at: 3 s\n        seed: 77\n\n      cups:" in after


def test_problems_are_errors_with_a_line() -> None:
    with pytest.raises(SceneError, match=r"^<scene>:\d+: no elements.nope to set seed in"):
        set_scalar(SCENE, ("elements", "nope", "seed"), "1")
    with pytest.raises(SceneError, match="is a list, mapping or block of text"):
        set_scalar(SCENE, ("elements", "rain", "effects"), "1")
    with pytest.raises(SceneError, match=r"^<scene>:2: invalid YAML"):
        set_scalar("a: 1\n b: [\n", ("a",), "2")


def load_scene_text(text: str) -> object:
    import yaml

    from soundscape.scene.load import scene_from_dict

    return scene_from_dict(yaml.safe_load(text))


def run_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture
def scene_file(tmp_path: Path) -> Path:
    p = tmp_path / "quirks.yaml"
    p.write_text(SCENE)
    return p


def test_keep_changes_only_the_seed_line(scene_file: Path) -> None:
    code, out = run_cli("takes", str(scene_file), "cups", "--keep", "123")
    assert code == 0, out
    assert out.strip() == f"{scene_file}: elements.cups.seed = 123"
    assert changed(SCENE, scene_file.read_text()) == ["-     seed: 11    # the good one",
                                                      "+     seed: 123    # the good one"]
    assert load_scene(scene_file).elements["cups"].seed == 123


def test_keep_a_variant_only_element(scene_file: Path) -> None:
    code, out = run_cli("takes", str(scene_file), "owl", "--keep", "5")
    assert code == 1
    assert "Error: " in out and "no element 'owl' in the base scene (give --variant" in out
    assert scene_file.read_text() == SCENE
    code, out = run_cli("takes", str(scene_file), "owl", "--variant", "night", "--keep", "5")
    assert code == 0, out
    assert out.strip() == f"{scene_file}: variants.night.elements.owl.seed = 5"
    assert changed(SCENE, scene_file.read_text()) == ["+         seed: 5"]
    assert load_scene(scene_file, "night").elements["owl"].seed == 5


def test_keep_through_a_variant_writes_the_variants_override(scene_file: Path) -> None:
    code, out = run_cli("takes", str(scene_file), "cups", "--variant", "night", "--keep", "8")
    assert code == 0, out
    assert load_scene(scene_file, "night").elements["cups"].seed == 8
    assert load_scene(scene_file).elements["cups"].seed == 11


def test_mute_silences_the_element_and_keeps_the_others(tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from soundscape.pipelines.render import render

    from .servers_util import studio_folder

    scene = studio_folder(tmp_path / "root")
    out = tmp_path / "out"
    render(scene, out=out)
    tone = soundfile.read(str(out / "live/stems/tone.wav"))[0]
    hum = soundfile.read(str(out / "live/stems/hum.wav"))[0]
    assert np.abs(hum).max() > 0.01
    tone_mtime = (out / "live/stems/tone.wav").stat().st_mtime_ns
    scene.write_text(set_scalar(scene.read_text(), ("elements", "hum", "mute"), "true"))
    [r] = render(scene, out=out)
    assert not np.any(soundfile.read(str(out / "live/stems/hum.wav"))[0])
    assert np.array_equal(soundfile.read(str(out / "live/stems/tone.wav"))[0], tone)
    assert (out / "live/stems/tone.wav").stat().st_mtime_ns == tone_mtime  # not rendered again
    assert r.manifest.element("hum").loudness_lufs is None
    assert load_scene(scene).elements["hum"].volume == pytest.approx(-18)


def test_takes_prints_its_page_and_the_keep_command(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "quirks.yaml"
    scene.write_text(SCENE)
    code, out = run_cli("takes", str(scene), "owl", "--variant", "night", "-n", "2",
                        "--model", str(tiny_model), "--out", str(tmp_path / "o"))
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[-2] == f"page: {tmp_path / 'o/quirks/takes/owl/index.html'}"
    assert lines[-1] == f"keep one: soundscape takes {scene} owl --variant night --keep SEED"
    assert (tmp_path / "o/quirks/takes/owl/index.html").is_file()
