"""Hostile and careless input: one clear error line, no traceback, no hang, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soundscape.errors import SceneError
from soundscape.scene import load_scene
from tests import conftest
from tests.conftest import wav

HEAD = "name: h\nduration: 10 s\nelements:\n"


def run_cli(*args: str) -> tuple[int, list[str]]:
    code, out = conftest.run_cli(*args)
    return code, out.strip().splitlines()


def one_error(tmp_path: Path, text: str) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SceneError) as e:
        load_scene(p)
    assert len(e.value.lines) == 1, e.value.lines
    return e.value.lines[0].replace(str(p), "S")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(bomb) + "\nname: b\nduration: 1\nelements: {x: {prompt: y}}\n")
    assert p.stat().st_size < 1000  # 10**9 values once expanded
    res = subprocess.run([sys.executable, "-m", "soundscape", "validate", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"Error: {p}:1: the scene expands to more than 100000 values (aliases that repeat "
        f"aliases?); write it out or split it"]


def test_deep_nesting_and_huge_files(tmp_path: Path) -> None:
    assert one_error(tmp_path, HEAD + "  x: {prompt: " + "[" * 5000 + "]" * 5000 + "}\n") == \
        "S:4: nesting is deeper than 50 levels"
    big = tmp_path / "big.yaml"
    big.write_text(HEAD + "  x: {prompt: y}\n" + "# padding\n" * 120_000)
    with pytest.raises(SceneError, match=r"the file is 1\.1 MiB; a scene is at most 1 MiB"):
        load_scene(big)


def test_a_megabyte_value_is_not_echoed(tmp_path: Path) -> None:
    line = one_error(tmp_path, HEAD + "  x: {prompt: y, volume: '" + "9" * 500_000 + " dbb'}\n")
    assert len(line) < 200 and "(500006 chars)" in line
    assert line.startswith("S:4: elements.x.volume: '99999")


@pytest.mark.parametrize("snippet,expected", [
    ("duration: 30 h\nelements: {x: {prompt: y}}",
     "S:2: duration: '30 h' is longer than the 24 h a scene may last; render it in parts"),
    ("duration: 1e9\nelements: {x: {prompt: y}}",
     "S:2: duration: '1e9' is longer than the 24 h a scene may last; render it in parts"),
    ("duration: 1.0e+9\nelements: {x: {prompt: y}}",
     "S:2: duration: 1000000000.0 is longer than the 24 h a scene may last; render it in parts"),
    ("duration: .inf\nelements: {x: {prompt: y}}",
     "S:2: duration: inf is not a duration; write e.g. 2.5, '2.5 s', '500 ms' or '1:30'"),
    ("duration: 60\nelements: {x: {prompt: y, duration: 10 min}}",
     "S:3: elements.x.duration: '10 min' is longer than the 5 min a take may last; use a "
     "shorter take and loop it, or several elements"),
    ("duration: 60\nelements: {x: {prompt: y}}\nvariants: {stems: {}}",
     "S:4: variants: a variant cannot be named 'stems': the base render keeps its stems, "
     "takes, loops, pools folders under that name; rename it, e.g. 'stems_v'"),
])
def test_ceilings_and_reserved_names(tmp_path: Path, snippet: str, expected: str) -> None:
    assert one_error(tmp_path, "name: h\n" + snippet + "\n") == expected


def test_element_count_is_checked_before_the_elements(tmp_path: Path) -> None:
    many = "".join(f"  e{i}: {{prompt: p, volume: nonsense}}\n" for i in range(300))
    assert one_error(tmp_path, HEAD + many) == \
        "S:3: elements: 300 elements is more than 256; split the scene"


def test_home_is_expanded_in_model_file_and_ir(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "ckpt").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    wav(home / "rain.wav", np.zeros(4800), 48000)
    wav(home / "ir.wav", np.r_[1.0, np.zeros(99)], 48000)
    p = tmp_path / "scenes" / "s.yaml"
    p.parent.mkdir()
    p.write_text("name: h\nduration: 2\nmodel: ~/ckpt\nelements:\n"
                 "  r: {file: ~/rain.wav, effects: [{convolution: {ir: ~/ir.wav}}]}\n")
    s = load_scene(p)
    assert s.model == str(home / "ckpt")
    assert s.elements["r"].file == str(home / "rain.wav")
    assert s.elements["r"].effects[0].ir_path == str(home / "ir.wav")


def test_unusable_recordings_fail_at_validate(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not audio at all " * 20)
    wav(tmp_path / "whole.wav", np.zeros(48000), 48000)
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "folder.wav").mkdir()
    cases = {
        "file: notes.txt": "S:4: elements.x.file: file 'notes.txt' is not readable audio (Failed "
                           "to open audio file); use wav, flac, ogg or mp3",
        # the data chunk is the file's last: what was cut off is all audio
        "file: cut.wav": f"S:4: elements.x.file: file 'cut.wav' is truncated "
                         f"({len(data) - len(data) // 2} bytes of its audio are missing); copy "
                         f"it again",
        "file: folder.wav": "S:4: elements.x.file: file 'folder.wav' is a folder, not an audio "
                            "file",
        "prompt: y, effects: [{convolution: {ir: notes.txt}}]":
            "S:4: elements.x.effects[0]: convolution.ir: impulse response 'notes.txt' is not "
            "readable audio (Failed to open audio file); use wav, flac, ogg or mp3",
    }
    for snippet, expected in cases.items():
        assert one_error(tmp_path, HEAD + f"  x: {{{snippet}}}\n") == expected


def _file_scene(tmp_path: Path, rate: int = 48000) -> Path:
    wav(tmp_path / "tone.wav", 0.1 * np.sin(np.arange(4800) / 10), 48000)
    p = tmp_path / "f.yaml"
    p.write_text(f"name: f\nduration: 2\nsample_rate: {rate}\nelements:\n"
                 f"  t: {{file: tone.wav, loop: true}}\n")
    return p


def test_output_checks_come_before_any_work(tmp_path: Path) -> None:
    scene = _file_scene(tmp_path, 96000)
    out = tmp_path / "o"
    code, lines = run_cli("render", str(scene), "--format", "mp3", "--out", str(out))
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("Error: f: cannot write mp3 at 96000 Hz (MP3 audio files do not "
                               "support the provided sample rate")
    assert not out.exists()
    code, lines = run_cli("render", str(scene), "--format", "flac", "--bit-depth", "32")
    assert (code, lines) == (1, ["Error: f: 32-bit float is written as wav only; use --format "
                                 "wav or --bit-depth 24 (flac)"])
    (tmp_path / "afile").write_text("x")
    code, lines = run_cli("render", str(scene), "--out", str(tmp_path / "afile"))
    assert (code, lines) == (1, [f"Error: --out {tmp_path / 'afile'} is a file; give a folder "
                                 f"for the renders"])


@pytest.mark.parametrize("args,expected", [
    (["--device", "gpu"], "Error: --device gpu is not one of auto, cuda, mps, cpu"),
    (["--format", "mp4"], "Error: --format mp4 is not one of wav, flac, ogg, mp3"),
    (["--bit-depth", "8"], "Error: --bit-depth 8 is not one of 16, 24, 32"),
])
def test_cli_choices_fail_in_one_line_without_heavy_imports(tmp_path: Path, args: list[str],
                                                            expected: str) -> None:
    code = ("import sys; from typer.testing import CliRunner; from soundscape.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code); print(r.output); "
            "print(sorted(m for m in ('torch', 'audiocraft', 'pedalboard') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code, "render", str(_file_scene(tmp_path)),
                          *args], capture_output=True, text=True, check=True)
    exit_code, *output, imported = [x for x in res.stdout.strip().splitlines() if x]
    assert exit_code == "2" and output == [expected] and imported == "[]"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway; "
                    "test_output_under_a_file_is_one_line covers the same path as root")
def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    scene = _file_scene(tmp_path)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, lines = run_cli("render", str(scene), "--out", str(out))
    finally:
        out.chmod(0o700)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ")


def test_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    """A render folder that cannot be made (a file where its parent should be): one Error line,
    exit 1, for any user, root included."""
    scene = _file_scene(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    code, lines = run_cli("render", str(scene), "--out", str(blocker / "renders"))
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert blocker.read_text() == "not a folder"


def test_effect_frequencies_are_checked_against_each_variants_rate(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nduration: 10\nsample_rate: 48000\nelements:\n"
                 "  rain:\n    prompt: rain\n    effects:\n      - lowpass: {cutoff: 9 kHz}\n"
                 "master: {effects: [{high_shelf: {cutoff: 8 kHz}}]}\n"
                 "variants:\n  phone: {sample_rate: 16000}\n")
    load_scene(p)  # 9 kHz is fine at 48 kHz
    with pytest.raises(SceneError) as e:
        load_scene(p, "phone")
    assert e.value.lines == [
        f"{p}:7: variant 'phone': elements.rain.effects[0].lowpass.cutoff: 9000 Hz is at or "
        f"above 0.45 x the 16000 Hz sample rate (7200 Hz); set it below 7200 Hz or raise "
        f"sample_rate",
        f"{p}:9: variant 'phone': master.effects[0].high_shelf.cutoff: 8000 Hz is at or above "
        f"0.45 x the 16000 Hz sample rate (7200 Hz); set it below 7200 Hz or raise sample_rate"]
    code, lines = run_cli("validate", str(p))
    assert code == 1 and lines == [f"Error: {line}" for line in e.value.lines]


def test_a_render_that_cannot_fit_is_refused_before_any_work(tmp_path: Path) -> None:
    wav(tmp_path / "minute.wav", 0.1 * np.sin(np.arange(48000 * 60) / 10), 48000)
    p = tmp_path / "crowd.yaml"  # 60 000 overlapping one-shots of a minute: ~690 GB held
    p.write_text("name: crowd\nduration: 10 min\nelements:\n"
                 "  voice: {file: minute.wav, scatter: {density: 6000/min, overlap: true}}\n")
    out = tmp_path / "o"
    code, lines = run_cli("render", str(p), "--out", str(out))
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("Error: crowd: this render would need about ")
    assert "GiB for 60" in lines[0] and "one-shots" in lines[0] and "GiB are available" in lines[0]
    assert not out.exists()


def test_a_render_that_cannot_fit_on_the_disk_is_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from soundscape.mixer import budget as resources

    monkeypatch.setattr(resources, "free_disk", lambda path: 1000)
    code, lines = run_cli("render", str(_file_scene(tmp_path)), "--out", str(tmp_path / "o"))
    assert (code, len(lines)) == (1, 1)
    assert lines[0].startswith("Error: f: the stems and mix (and the render's temporary files) "
                               "would take about 0.0 GB and ")
    assert lines[0].endswith("has 0.0 GB free; free some space, write elsewhere with --out, "
                             "or use --format flac or ogg")
    assert not (tmp_path / "o").exists()
