"""Exports with known answers: loop files that join at their ends at the body's level, their
smpl loop and bext read back by an independent reader (wavinfo), Vorbis comments read by
libsndfile, RIFF chunks laid out to the byte, pools that round-trip and match the mix."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from wavinfo import WavInfoReader

from soundscape import __version__
from soundscape.arrange import LoopRun
from soundscape.audio_io import read_audio, write_audio
from soundscape.cli import app
from soundscape.mixer.loops import LoopSource
from soundscape.outputs.loopfiles import loop_period, periodic_effects
from soundscape.outputs.manifest import read_manifest
from soundscape.outputs.pools import read_pools
from soundscape.outputs.tags import Tags, levels, tag_file
from soundscape.pipelines.render import render
from soundscape.riff import set_chunks, wav_chunks
from tests.conftest import wav

RATES = [22050, 44100, 48000, 96000]


def drone(sr: int, seconds: float, channels: int) -> np.ndarray:
    """A stationary drone with no whole period in frames at any rate, and a partial high
    enough that a seam out of phase would show as a step or a dip."""
    t = np.arange(int(seconds * sr)) / sr
    return np.array([0.3 * np.sin(2 * np.pi * 110.3 * t + 0.7 * c)
                     + 0.1 * np.sin(2 * np.pi * 220.6 * t + 1 + 0.7 * c)
                     + 0.05 * np.sin(2 * np.pi * 3170.9 * t + 0.7 * c)
                     for c in range(channels)], dtype=np.float32)


def wrap_problems(y: np.ndarray, sr: int) -> tuple[float, float, float]:
    """``(step at the wrap, largest step inside, largest level deviation across the wrap)``
    of a loop file played twice end to end; levels are 50 ms RMS against the file's median."""
    steps = np.abs(np.diff(y.astype(np.float64), axis=1)).max()
    wrap = float(np.abs(y[:, 0].astype(np.float64) - y[:, -1]).max())
    n, w = y.shape[1], int(0.05 * sr)
    two = np.concatenate([y, y], axis=1).astype(np.float64)

    def rms_db(a: np.ndarray) -> float:
        return float(10 * np.log10((a**2).mean()))

    body = float(np.median([rms_db(y[:, i:i + w]) for i in range(0, n - w, w // 2)]))
    across = [rms_db(two[:, i:i + w]) for i in range(n - 2 * w, n + w, max(1, w // 10))]
    return wrap, float(steps), float(np.abs(np.array(across) - body).max())


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_loop_period_is_the_run_itself(sr: int, channels: int) -> None:
    take = drone(sr, 3.3, channels)
    run = LoopRun("x", 0, 0.0, None, 6, 0.5, 0.0, 0.0, 0.0)
    period = loop_period(take, run, sr)
    src = LoopSource(take, run, sr, 0)
    assert period.shape == (channels, src.period)
    # the file repeated is, sample for sample, the steady part of the mixer's own loop run
    a = src.period + src.loop_start + src.xf
    np.testing.assert_array_equal(np.tile(period, (1, 3)), src.read(a, a + 3 * src.period))
    wrap, step, level = wrap_problems(period, sr)
    assert wrap <= step and level <= 0.5


def _loop_scene(tmp_path: Path, sr: int, channels: int, effects: str = "") -> Path:
    wav(tmp_path / "drone.wav", drone(44100, 3.3, channels), 44100)
    scene = tmp_path / "loopy.yaml"
    scene.write_text(f"""\
name: loopy
duration: 6 s
sample_rate: {sr}
channels: {channels}
elements:
  drone: {{file: drone.wav, volume: -6 dB, loop: {{crossfade: 400 ms}}{effects}}}
master: {{loudness: -20 LUFS}}
""")
    return scene


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_loop_file_loops_seamlessly_with_smpl_and_bext(tmp_path: Path, sr: int,
                                                       channels: int) -> None:
    scene = _loop_scene(tmp_path, sr, channels)
    result = CliRunner().invoke(app, ["render", str(scene), "--loops", "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "o/loopy/loops/drone.wav"
    y, file_sr = read_audio(path)
    assert file_sr == sr and y.shape[0] == channels
    wrap, step, level = wrap_problems(y, sr)
    assert wrap <= step, (wrap, step)
    assert level <= 0.5
    info = WavInfoReader(path)
    assert info.data.frame_count == y.shape[1]
    [loop] = info.smpl.sample_loops
    assert (loop.loop_type, loop.start, loop.end, loop.repetition_count) == \
        (0, 0, y.shape[1] - 1, 0)
    assert info.smpl.sample_period_ns == round(1e9 / sr)
    b = info.bext
    assert b.description == "loopy drone: recording drone.wav"
    assert b.originator == f"soundscape {__version__}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", b.originator_date)
    assert re.fullmatch(r"\d\d:\d\d:\d\d", b.originator_time)
    assert b.time_reference == 0 and b.version == 2
    assert b.coding_history == f"A=PCM,F={sr},W=24,M={'stereo' if channels == 2 else 'mono'}," \
                               f"T=soundscape {__version__}\r\n"
    # the loop's loudness as it plays, repeated (the drone's three partials, as a sum of sines)
    assert b.loudness_value == pytest.approx(levels(y, sr, looped=True)[0], abs=0.011)
    assert info.info.title == "drone (loop)" and info.info.product == "loopy"
    assert "element=drone" in info.info.comment and "scene=loopy" in info.info.comment
    rec = read_manifest(tmp_path / "o/loopy/manifest.json")
    assert rec is not None
    [export] = rec.exports
    assert (export.kind, export.element, export.files) == ("loop", "drone",
                                                           ("loops/drone.wav",))
    assert export.bytes == path.stat().st_size


@pytest.mark.parametrize("sr", [22050, 48000])
def test_loop_file_carries_the_effects_in_their_steady_state(tmp_path: Path, sr: int) -> None:
    scene = _loop_scene(tmp_path, sr, 2, ", effects: [{highpass: {cutoff: 200 Hz}}, "
                                         "{reverb: {room_size: 0.8, wet: 1, dry: 0}}]")
    [res] = render(scene, out=tmp_path / "o", loops=True)
    y, _ = read_audio(res.loops["drone"])
    wrap, step, level = wrap_problems(y, sr)
    assert wrap <= step and level <= 0.5
    # the highpass took the 110 Hz fundamental down: the file is not the dry period
    dry, _ = read_audio(tmp_path / "drone.wav")
    assert np.sqrt((y.astype(np.float64) ** 2).mean()) < 0.9 * np.sqrt((dry ** 2).mean())


def test_time_varying_effects_leave_the_loop_dry_and_say_so(tmp_path: Path) -> None:
    scene = _loop_scene(tmp_path, 48000, 1, ", effects: [chorus]")
    [res] = render(scene, out=tmp_path / "o", loops=True)
    assert [str(w) for w in res.export_warnings] == [
        "drone: loops/drone.wav is written without its effects: chorus change over time, so "
        "the file would not join at its ends"]
    y, _ = read_audio(res.loops["drone"])
    wrap, step, level = wrap_problems(y, 48000)
    assert wrap <= step and level <= 0.5


def test_periodic_effects_output_is_periodic() -> None:
    from soundscape.arrange import ElementPlan
    from soundscape.dsp.effects import parse_effect

    sr = 48000
    period = drone(sr, 1.0, 1)
    echo = parse_effect({"delay": {"time": "300 ms", "feedback": 0.5}}, None)
    plan = ElementPlan("x", 1.0, effects=(echo,))
    a = periodic_effects(period, plan, sr)
    b = periodic_effects(np.tile(period, (1, 2)), plan, sr)  # two periods: the same steady state
    np.testing.assert_allclose(np.tile(a, (1, 2)), b, atol=1e-5)


def test_loop_exports_are_incremental(tmp_path: Path) -> None:
    scene = _loop_scene(tmp_path, 48000, 1)
    out = tmp_path / "o"
    [first] = render(scene, out=out)
    assert first.exported == () and not (out / "loopy/loops").exists()
    # an up-to-date render asked for loops writes just them, and records them
    [second] = render(scene, out=out, loops=True)
    loop = out / "loopy/loops/drone.wav"
    assert second.up_to_date and second.exported == (loop,)
    stamp = loop.stat().st_mtime_ns
    manifest = (out / "loopy/manifest.json").read_bytes()
    [third] = render(scene, out=out, loops=True)  # nothing changed: nothing written
    assert third.up_to_date and third.exported == ()
    assert loop.stat().st_mtime_ns == stamp
    assert (out / "loopy/manifest.json").read_bytes() == manifest
    # a volume change re-renders the mix but leaves the loop file (volume is not in it)
    scene.write_text(scene.read_text().replace("-6 dB", "-9 dB"))
    [fourth] = render(scene, out=out)
    assert not fourth.up_to_date and loop.stat().st_mtime_ns == stamp
    assert [x.element for x in fourth.manifest.exports] == ["drone"]
    # a new crossfade makes the loop file stale: a render without --loops removes it
    scene.write_text(scene.read_text().replace("400 ms", "300 ms"))
    [fifth] = render(scene, out=out)
    assert fifth.manifest.exports == () and not loop.exists()


def _scatter_scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    for i, seconds in enumerate((0.3, 0.5)):
        n = int(seconds * 44100)
        wav(tmp_path / f"knock{i}.wav",
            rng.normal(0, 0.2, n) * np.exp(-np.arange(n) / 3000), 44100)
    scene = tmp_path / "pooled.yaml"
    scene.write_text("""\
name: pooled
duration: 60 s
sample_rate: 48000
elements:
  knock: {file: knock0.wav, volume: -4 dB, pan: 0.3, fade_out: 20 ms,
          scatter: {interval: [2 s, 5 s], level_jitter: 3 dB, pan_jitter: 0.5}}
  tap: {file: knock1.wav, scatter: {density: 12, overlap: true, start: 5 s}}
  bed: {file: knock1.wav, loop: true}
""")
    return scene


def test_pools_round_trip_and_describe_the_mix(tmp_path: Path) -> None:
    scene = _scatter_scene(tmp_path)
    code = CliRunner().invoke(app, ["render", str(scene), "--export", "pools", "--out",
                                    str(tmp_path / "o")])
    assert code.exit_code == 0, code.output
    folder = tmp_path / "o/pooled"
    path = folder / "pools/pools.json"
    doc = read_pools(path)
    assert doc.to_json() == json.loads(path.read_text())  # typed values round-trip
    assert (doc.scene, doc.variant, doc.sample_rate, doc.duration_s) == ("pooled", None,
                                                                          48000, 60.0)
    knock, tap = doc.pools
    assert (knock.element, knock.files, knock.volume_db, knock.pan, knock.level_jitter_db,
            knock.pan_jitter, knock.interval_s, knock.density_per_min, knock.overlap) == \
        ("knock", ("knock/knock-1.wav",), -4.0, 0.3, 3.0, 0.5, (2.0, 5.0), None, False)
    assert (tap.interval_s, tap.density_per_min, tap.overlap, tap.start_s) == \
        (None, 12.0, True, 5.0)
    # the one-shot is the take at the scene rate with the element's 20 ms fade-out
    shot, sr = read_audio(path.parent / knock.files[0])
    src, _ = read_audio(tmp_path / "knock0.wav")
    assert sr == 48000 and shot.shape == (1, round(src.shape[1] * 48000 / 44100))
    assert knock.lengths_s == (round(shot.shape[1] / 48000, 6),)
    assert np.abs(shot[0, -1]) < 1e-3 < np.abs(shot[0, :100]).max()
    # every play in the mix is one of the pool's files at a level and pan the pool allows
    m = json.loads((folder / "manifest.json").read_text())
    plays = next(e for e in m["elements"] if e["element"] == "knock")["placements"]
    starts = [p["start_s"] for p in plays]
    assert len(plays) >= 10
    for p in plays:
        assert p["take"] < len(knock.files)
        assert abs(p["gain_db"]) <= knock.level_jitter_db
        assert abs(p["pan"] - knock.pan) <= knock.pan_jitter + 1e-6
    gaps = np.diff(starts)
    assert gaps.min() >= knock.interval_s[0] - 1e-6 and gaps.max() <= knock.interval_s[1] + 1e-6
    info = WavInfoReader(path.parent / knock.files[0])
    assert info.bext.description == "pooled knock: recording knock0.wav"
    assert info.smpl is None  # a one-shot does not loop


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    wav(tmp_path / "t.wav", 0.1 * np.sin(np.arange(4800) / 10), 48000)
    scene = tmp_path / "flat.yaml"
    scene.write_text("name: flat\nduration: 2\nelements:\n  t: {file: t.wav, at: 0.5}\n")
    runner = CliRunner()
    for args, line in [
        (["--loops"], "Error: --loops: flat has no looped element (loop: ...); nothing to "
                      "write; add loop: to an element or leave out --loops"),
        (["--export", "pools"], "Error: --export pools: flat has no scattered element "
                                "(scatter: ...); nothing to write; leave out --export pools"),
        (["--export", "stems"], "Error: --export stems is not one of pools, loops"),
    ]:
        r = runner.invoke(app, ["render", str(scene), "--out", str(tmp_path / "o"), *args])
        assert r.exit_code != 0 and r.stderr.strip().splitlines() == [line], r.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Metadata and RIFF


def _walk(path: Path) -> list[tuple[bytes, int]]:
    """Every chunk by hand, checking the layout: sizes, even padding, the RIFF size."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    pos, out = 12, []
    while pos < len(data):
        cid, size = struct.unpack("<4sI", data[pos:pos + 8])
        out.append((cid, size))
        pos += 8 + size + (size & 1)
    assert pos == len(data)
    return out


@pytest.mark.parametrize("bits", [16, 24, 32])
def test_chunks_are_laid_out_to_the_byte_and_replaced_not_added(tmp_path: Path,
                                                                bits: int) -> None:
    rng = np.random.default_rng(bits)
    audio = rng.uniform(-0.5, 0.5, (2, 1001)).astype(np.float32)
    path = write_audio(tmp_path / "a.wav", audio, 44100, bits)
    before, _ = read_audio(path)
    tags = Tags("title", "an odd-length description", "scene", "night", "rain",
                "rain on a tin roof", 42, "model", "k" * 64, "2026-01-02T03:04:05", -20.5, -1.25)
    assert tag_file(path, tags, loop_frames=1001)
    assert tag_file(path, tags, loop_frames=1001)  # again: replaced, not added
    ids = [c for c, _ in _walk(path)]
    assert ids.count(b"bext") == ids.count(b"smpl") == ids.count(b"LIST") == 1
    assert ids.index(b"bext") < ids.index(b"data")  # bext first, where BWF readers look
    after, _ = read_audio(path)
    np.testing.assert_array_equal(before, after)  # the audio is untouched
    info = WavInfoReader(path)
    assert info.bext.loudness_value == -20.5 and info.bext.max_true_peak == -1.25
    assert info.bext.loudness_range == 327.67  # 0x7FFF: not measured (EBU 3285)
    assert (info.bext.originator_ref, info.bext.originator_date,
            info.bext.originator_time) == ("k" * 32, "2026-01-02", "03:04:05")
    assert info.bext.description == "an odd-length description"
    assert info.info.comment == ("scene=scene; variant=night; element=rain; prompt=rain on a "
                                 f"tin roof; seed=42; model=model; key={'k' * 64}; "
                                 f"software=soundscape {__version__}")
    assert info.smpl.sample_loops[0].end == 1000


def test_silence_reads_as_unknown_loudness(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "s.wav", np.zeros((1, 4800), np.float32), 48000)
    assert tag_file(path, Tags("t", "d", "s", loudness_lufs=-math.inf,
                               true_peak_dbtp=-math.inf))
    b = WavInfoReader(path).bext
    assert b.loudness_value == b.max_true_peak == 327.67  # 0x7FFF: no value


def test_rf64_and_foreign_files_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"RF64" + b"\xff" * 4 + b"WAVE" + b"\0" * 40)
    assert not set_chunks(path, {b"bext": b"x"}, {})
    assert path.read_bytes()[:4] == b"RF64" and wav_chunks(path) is None


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_tags_in_flac_ogg_and_mp3(tmp_path: Path, fmt: str) -> None:
    scene = _loop_scene(tmp_path, 48000, 2)
    [res] = render(scene, out=tmp_path / "o", fmt=fmt)
    if fmt == "mp3":
        from mutagen.id3 import ID3

        t = ID3(res.mix)
        assert str(t["TIT2"]) == "loopy mix" and str(t["TSSE"]) == f"soundscape {__version__}"
        assert str(t["TXXX:SOUNDSCAPE_SCENE"]) == "loopy"
        return
    import soundfile

    for path, title in [(res.mix, "loopy mix"), (res.stems["drone"], "drone")]:
        with soundfile.SoundFile(path) as f:  # libsndfile: a reader independent of mutagen
            meta = f.copy_metadata()
        assert meta["title"] == title and meta["album"] == "loopy"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", meta["date"])
        assert "scene=loopy" in meta["comment"]
    audio, _ = read_audio(res.mix)  # still decodes
    assert audio.shape == (2, 6 * 48000)


def test_mix_and_stems_carry_bext_with_their_loudness(tmp_path: Path) -> None:
    scene = _loop_scene(tmp_path, 48000, 2)
    [res] = render(scene, out=tmp_path / "o")
    mix = WavInfoReader(res.mix).bext
    assert mix.description.startswith("loopy mix: drone")
    assert mix.loudness_value == pytest.approx(res.mix_lufs, abs=0.011)
    assert mix.max_true_peak == pytest.approx(res.mix_true_peak_dbtp, abs=0.011)
    stem = WavInfoReader(res.stems["drone"]).bext
    rec = res.manifest.element("drone")
    assert rec is not None and stem.loudness_value == pytest.approx(rec.loudness_lufs,
                                                                    abs=0.011)
    assert rec.bytes == res.stems["drone"].stat().st_size  # recorded after tagging
    # and the next render keeps the tagged stem: nothing is rewritten
    [again] = render(scene, out=tmp_path / "o")
    assert again.up_to_date


def test_manifest_without_exports_still_reads(tmp_path: Path) -> None:
    scene = _loop_scene(tmp_path, 48000, 1)
    [res] = render(scene, out=tmp_path / "o", loops=True)
    data = json.loads(res.manifest_path.read_text())
    assert [x["kind"] for x in data["exports"]] == ["loop"]
    del data["exports"]  # as written before exports existed
    res.manifest_path.write_text(json.dumps(data))
    old = read_manifest(res.manifest_path)
    assert old is not None and old.exports == () and old.mix.key == res.manifest.mix.key


def test_levels_of_a_loop_count_the_wrap() -> None:
    sr = 48000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t))[None].astype(np.float32)
    lufs, peak = levels(tone, sr, looped=True)
    # a 1 kHz sine at -6.02 dBFS peak reads -9.02 LUFS mono (BS.1770: +0.69 dB K-weight gain
    # at 1 kHz, -0.691 offset) and a true peak of -6.02 dBTP
    assert lufs == pytest.approx(20 * math.log10(0.5) - 3.01, abs=0.1)
    assert peak == pytest.approx(20 * math.log10(0.5), abs=0.05)


def test_readme_pool_example_runs_on_a_real_export(tmp_path: Path) -> None:
    import contextlib
    import io
    import os

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                if "pools.json" in block)
    scene = _scatter_scene(tmp_path)
    render(scene, out=tmp_path / "renders", export=["pools"])
    (tmp_path / "renders/rainy_cafe").symlink_to(tmp_path / "renders/pooled")
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["knock", "tap"]
    assert lines[0].startswith("knock: play pools/knock/knock-1.wav at ")
    gain = float(re.search(r"at ([+-][\d.]+) dB", lines[0]).group(1))  # type: ignore[union-attr]
    assert -7.0 <= gain <= -1.0  # -4 dB +/- 3 dB


def test_scene_level_exports_and_a_variant_without_loops(tmp_path: Path) -> None:
    scene = _loop_scene(tmp_path, 48000, 1)
    scene.write_text(scene.read_text() + "exports: [loops]\nvariants:\n  still:\n    elements:\n"
                     "      drone: {loop: null, at: 1 s}\n")
    base, still = render(scene, out=tmp_path / "o", all_variants=True)  # no --loops
    assert list(base.loops) == ["drone"] and base.loops["drone"].is_file()
    assert still.loops == {} and [str(w) for w in still.export_warnings] == [
        "--loops: loopy/still has no looped element; no loop file written"]
    assert not (tmp_path / "o/loopy/still/loops").exists()


def test_temps_of_a_killed_export_are_swept(tmp_path: Path) -> None:
    scene = _scatter_scene(tmp_path)
    render(scene, out=tmp_path / "o", export=["pools"], loops=True)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    temps = [tmp_path / f"o/pooled/loops/.bed.{dead}-abc.tmp.wav",
             tmp_path / f"o/pooled/pools/knock/.knock-1.{dead}-abc.tmp.wav"]
    for t in temps:
        t.write_bytes(b"half")
    render(scene, out=tmp_path / "o", export=["pools"], loops=True)  # up to date otherwise
    assert not any(t.exists() for t in temps)
