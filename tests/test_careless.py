"""Careless use at render time (issue 24): --only with variants, and inputs that must end in one
clear line, a warning, or a fast result instead of a silent wrong one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundscape.cli import app
from soundscape.pipelines.render import render
from tests.conftest import wav


def _variant_scene(tmp_path: Path) -> Path:
    sr = 48000
    t = np.arange(2 * sr) / sr
    wav(tmp_path / "hum.wav", 0.1 * np.sin(2 * np.pi * 110 * t), sr)
    wav(tmp_path / "tick.wav", 0.3 * np.exp(-np.arange(2400) / 200.0), sr)
    scene = tmp_path / "room.yaml"
    scene.write_text("""\
name: room
duration: 4 s
sample_rate: 48000
elements:
  hum: {file: hum.wav, loop: true, volume: -6 dB}
  tick: {file: tick.wav, at: [0.5 s, 2 s], pan: -0.5}
master: {loudness: off, ceiling: 0}
variants:
  night:
    elements:
      hum: {volume: -12 dB}
""")
    return scene


def test_a_misspelt_only_with_all_variants_is_the_same_one_line_error(tmp_path: Path) -> None:
    scene = _variant_scene(tmp_path)
    runner = CliRunner()
    lines = []
    for extra in ([], ["--all-variants"]):
        r = runner.invoke(app, ["render", str(scene), "--only", "hmu", "--out",
                                str(tmp_path / "o"), *extra])
        assert r.exit_code == 1, r.output
        lines.append(r.stderr.strip().splitlines())
    assert lines[0] == lines[1] == [
        "Error: --only: room has no element 'hmu'; elements: hum, tick"]
    assert not (tmp_path / "o").exists()


def test_a_correct_only_into_a_fresh_folder_leaves_stems_that_sum_to_the_mix(
        tmp_path: Path) -> None:
    scene = _variant_scene(tmp_path)
    results = render(scene, out=tmp_path / "o", only=["tick"], all_variants=True, bit_depth=32)
    assert len(results) == 2
    for res in results:
        m = json.loads(res.manifest_path.read_text())
        stems = {e["element"]: e["stem"] for e in m["elements"]}
        assert set(stems) == {"hum", "tick"} and None not in stems.values()
        mix, _ = sf.read(str(res.directory / m["mix"]["file"]), always_2d=True)
        total = sum(sf.read(str(res.directory / f), always_2d=True)[0] for f in stems.values())
        np.testing.assert_allclose(total, mix, atol=1e-5)
    # a later --only leaves the other stems alone: they are current, and still sum
    again = render(scene, out=tmp_path / "o", only=["tick"], all_variants=True, bit_depth=32)
    assert all(r.up_to_date for r in again)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a POSIX signal")
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path: Path, jobs: str) -> None:
    """``timeout``, CI runners and service managers end a process with SIGTERM, to it alone:
    the render unwinds as on Ctrl-C, its workers go and no temporary stem is left."""
    from tests.test_kills import children, long_scene

    scene = long_scene(tmp_path, elements=3)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "soundscape", "render", str(scene), "--out",
                             str(out), "--jobs", jobs], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob(".*.tmp.wav")):
        time.sleep(0.05)
    assert list(out.rglob(".*.tmp.wav")), "no stem was being written"
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)  # the render alone, not its group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "Terminated; finished takes are cached and no partial file was left.")
    assert not list(out.rglob(".*tmp*"))
    assert not (out / "long/mix.wav").exists()
    deadline = time.time() + 5
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}/cmdline").exists() and b"soundscape" in
                   Path(f"/proc/{w}/cmdline").read_bytes() for w in workers)


def test_an_only_render_says_when_an_older_stem_no_longer_sums_to_the_mix(
        tmp_path: Path) -> None:
    scene = _variant_scene(tmp_path)
    render(scene, out=tmp_path / "o")
    scene.write_text(scene.read_text().replace("volume: -6 dB", "volume: -3 dB"))
    (res,) = render(scene, out=tmp_path / "o", only=["tick"])
    assert [str(w) for w in res.warnings if w.element == "hum" and "--only" in str(w)] == [
        "hum: stems/hum.wav is from an earlier render and not rewritten (--only), so the stems "
        "no longer sum to the mix; render without --only to rewrite it"]
    (again,) = render(scene, out=tmp_path / "o")  # without --only: rewritten, and no warning
    assert not [w for w in again.warnings if "--only" in str(w)]
