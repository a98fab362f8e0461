"""Exports read the way other tools read them (issue 24): pools whose JSON and files let an engine
play what the mix plays, measured with readers that are not ours (libsndfile through soundfile,
wavinfo, mutagen, pyloudnorm)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundscape.outputs.pools import TAIL_FLOOR_DB, PoolExport, read_pools
from soundscape.pipelines.render import render
from tests.conftest import wav


def _drip_scene(tmp_path: Path, sr: int, channels: int, effects: str,
                scatter: str = "{density: 27}", duration: str = "60 s") -> Path:
    rng = np.random.default_rng(3)
    n = 48000  # a 1 s drip: a decaying noise burst, then its own ring to the end
    wav(tmp_path / "drip.wav", rng.normal(0, 0.3, n) * np.exp(-np.arange(n) / 4000), 48000)
    scene = tmp_path / "cave.yaml"
    scene.write_text(f"name: cave\nduration: {duration}\nsample_rate: {sr}\n"
                     f"channels: {channels}\nelements:\n"
                     f"  drip: {{file: drip.wav, scatter: {scatter}, effects: {effects}}}\n")
    return scene


@pytest.mark.parametrize(("sr", "channels"), [(22050, 1), (48000, 2), (96000, 1)])
def test_pools_space_plays_by_the_sound_and_trim_the_tail(tmp_path: Path, sr: int,
                                                          channels: int) -> None:
    scene = _drip_scene(tmp_path, sr, channels, "[{reverb: {room_size: 0.9}}]")  # 8.2 s estimate
    (res,) = render(scene, out=tmp_path / "o", export=["pools"])
    path = tmp_path / "o/cave/pools/pools.json"
    doc = read_pools(path)
    assert doc.version == 2 and json.loads(path.read_text())["version"] == 2
    (pool,) = doc.pools
    assert pool.sound_length_s == 1.0 and pool.min_spacing_s == 1.0 and not pool.overlap
    # the mix spaces its drips by the sound, not by the file: an engine that waits for the file
    # to end would play far fewer than the mix's
    plays = next(e for e in res.manifest.to_json()["elements"]
                 if e["element"] == "drip")["placements"]
    gaps = np.diff([p["start_s"] for p in plays])
    assert len(plays) >= 15 and gaps.min() >= pool.min_spacing_s - 1e-6
    info = sf.info(str(path.parent / pool.files[0]))
    assert (info.samplerate, info.channels) == (sr, pool.channels) == (sr, 1)  # a mono take
    assert pool.lengths_s == (round(info.frames / sr, 6),)
    assert 1.0 < info.duration < 1.0 + 8.2  # the tail is trimmed, not the 8.2 s estimate
    # trimmed where it stays below -60 dB re the file's peak: the last 10 ms are below the floor
    # and the 50 ms before the cut's fade still reach it
    y, _ = sf.read(str(path.parent / pool.files[0]), always_2d=True)
    a = np.abs(y).max(axis=1)
    floor = a.max() * 10 ** (TAIL_FLOOR_DB / 20)
    assert a[-int(0.01 * sr):].max() < floor
    assert a[-int(0.06 * sr):-int(0.01 * sr)].max() >= floor * 0.5


def test_a_tick_through_a_long_feedback_delay_is_bounded_and_warned(tmp_path: Path) -> None:
    scene = _drip_scene(tmp_path, 48000, 1, "[{delay: {time: 10 s, feedback: 0.95, mix: 0.5}}]",
                        scatter="{interval: [20 s, 30 s]}", duration="120 s")
    t0 = time.perf_counter()
    (res,) = render(scene, out=tmp_path / "o", export=["pools"])
    took = time.perf_counter() - t0
    f = tmp_path / "o/cave/pools/drip/drip-1.wav"
    info = sf.info(str(f))
    # the estimate says 30 min (260 MB at 24-bit); the file keeps 30 s of tail at most
    assert info.duration == pytest.approx(1.0 + 30.0, abs=1e-3)
    assert f.stat().st_size < 5_000_000 and took < 60
    (w,) = [str(w) for w in res.export_warnings]
    assert w.startswith("drip: pools/drip/drip-1.wav: the effects' tail is still at -")
    # the echoes are the mix's: the 10 s echo is in the file at its place
    y, _ = sf.read(str(f), always_2d=True)
    assert np.abs(y[480000:480000 + 4800]).max() > 0.1 * np.abs(y[:48000]).max()


def test_a_version_1_pools_file_still_reads(tmp_path: Path) -> None:
    old = {"scene": "s", "variant": None, "sample_rate": 48000, "duration_s": 60.0,
           "software": "soundscape 0.1", "pools": [{
               "element": "k", "files": ["k/k-1.wav"], "lengths_s": [9.2], "channels": 1,
               "volume_db": -4.0, "pan": 0.0, "level_jitter_db": 0.0, "pan_jitter": 0.0,
               "interval_s": None, "density_per_min": 27.0, "count": None, "start_s": 0.0,
               "end_s": None, "overlap": False, "prompt": None, "seeds": [],
               "baked": ["fades", "effects"]}]}
    p = tmp_path / "pools.json"
    p.write_text(json.dumps(old))
    doc = read_pools(p)
    assert doc.version == 1 and doc.pools[0].sound_length_s is None
    assert doc.pools[0].min_spacing_s is None and doc.pools[0].lengths_s == (9.2,)
    assert isinstance(PoolExport.from_json({**old, "later": 1}), PoolExport)  # additive fields


# ---------------------------------------------------------------------------------------------
# SFX libraries


def _sfx_list(tmp_path: Path, loudness: str, sounds: str) -> Path:
    p = tmp_path / "lib.yaml"
    p.write_text(f"name: lib\ndefaults: {{duration: 1 s, variations: 2, loudness: {loudness}}}\n"
                 f"ucs: {{category: DOORWood}}\nsounds:\n{sounds}")
    return p


def _catalog(root: Path) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader((root / "catalog.csv").open(newline="")))


def test_sfx_reaches_its_loudness_or_says_what_it_reached(tmp_path: Path,
                                                          tiny_model: Path) -> None:
    import pyloudnorm

    from soundscape.pipelines.sfx import render_sfx

    sounds = "  - {name: slam, prompt: a heavy door slamming, seed: 4}\n"
    for target in (-20.0, -8.0):
        res = render_sfx(_sfx_list(tmp_path, f"{target} LUFS", sounds), tmp_path / str(target),
                         model=str(tiny_model))
        rows = _catalog(res.directory)
        notes = [str(w) for w in res.warnings if "LUFS" in str(w)]
        for row in rows:
            y, sr = sf.read(str(res.directory / row["file"]))
            lufs = pyloudnorm.Meter(sr).integrated_loudness(y)  # a 1 s sound: no looping
            assert float(row["loudness_lufs"]) == pytest.approx(lufs, abs=0.1)
            assert float(row["target_lufs"]) == target
            # the limiter only catches peaks: at most the list's max_limiting (6 dB by default)
            assert 0.0 <= float(row["limiter_reduction_db"]) <= 6.05
            if abs(lufs - target) > 0.5:  # out of reach: said, per file, with the figure
                assert f"{row['file']}: reached {float(row['loudness_lufs']):.1f} LUFS, not " \
                       f"{target:.1f}" in " ".join(notes)
                assert "dB above its loudness" in " ".join(notes)
        if target == -20.0:  # reachable: met, as the master meets its own
            assert notes == [] and all(abs(float(r["loudness_lufs"]) + 20) <= 0.5 for r in rows)
        else:
            assert len(notes) == sum(abs(float(r["loudness_lufs"]) + 8) > 0.5 for r in rows)


def test_sfx_format_flags_and_an_edited_list_leaves_no_orphans(tmp_path: Path,
                                                               tiny_model: Path) -> None:
    from typer.testing import CliRunner

    from soundscape.cli import app

    two = ("  - {name: slam, prompt: a heavy door slamming, seed: 4}\n"
           "  - {name: creak, prompt: a door creaking, seed: 9}\n")
    lst = _sfx_list(tmp_path, "-18 LUFS", two)
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["sfx", str(lst), "--model", str(tiny_model), "--out", str(out),
                                 "--sample-rate", "44100", "--channels", "2",
                                 "--bit-depth", "24"])
    assert r.exit_code == 0, r.output
    root = out / "lib"
    rows = _catalog(root)
    assert len(rows) == 4
    for row in rows:
        info = sf.info(str(root / row["file"]))
        assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_24")
        assert (row["sample_rate"], row["channels"]) == ("44100", "2")
    mine = root / "creak" / "notes.txt"  # not soundscape's: stays
    mine.write_text("keep me")
    lst.write_text(lst.read_text().replace("variations: 2", "variations: 1")
                   .replace("  - {name: creak, prompt: a door creaking, seed: 9}\n", ""))
    r = CliRunner().invoke(app, ["sfx", str(lst), "--model", str(tiny_model), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _catalog(root)
    audio = sorted(str(p.relative_to(root)) for p in root.rglob("*.wav"))
    assert audio == [row["file"] for row in rows] == ["slam/DOORWood_Slam_SNDSCP_Lib_seed4.wav"]
    assert mine.read_text() == "keep me"
    r = CliRunner().invoke(app, ["sfx", str(lst), "--channels", "3", "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.splitlines() == ["Error: --channels 3 is not one of 1, 2"]


# ---------------------------------------------------------------------------------------------
# Metadata as other readers read it


def test_bext_is_ascii_info_latin1_and_ixml_keeps_the_full_text(tmp_path: Path) -> None:
    from wavinfo import WavInfoReader

    from soundscape.audio_io import write_audio
    from soundscape.outputs.tags import Tags, tag_file

    path = write_audio(tmp_path / "a.wav", np.zeros((1, 4800), np.float32), 48000, 16)
    text = "Café – 雨 on a tin roof"
    assert tag_file(path, Tags(text, f"rainy {text}", "rainy_café", "nuit", "rain", text, 1))
    info = WavInfoReader(path)  # its defaults: bext in ASCII, INFO in Latin-1
    assert info.bext.description == "rainy Cafe ? ? on a tin roof"  # what BWF allows
    assert info.info.title == "Café ? ? on a tin roof"  # Latin-1 as readers take it
    assert info.info.product == "rainy_café"
    assert "prompt=Café ? ? on a tin roof" in info.info.comment
    assert info.ixml.project == "rainy_café" and info.ixml.scene == "nuit"
    assert info.ixml.raw_xml.find("NOTE").text == f"rainy {text}"  # the full text
    assert f"prompt={text};" in info.ixml.raw_xml.find("USER").text


@pytest.mark.parametrize("bits", [16, 24, 32])
def test_a_float_wav_carries_the_fact_chunk(tmp_path: Path, bits: int) -> None:
    import struct

    from soundscape.audio_io import write_audio
    from soundscape.outputs.tags import Tags, tag_file
    from soundscape.riff import wav_chunks

    n = 1001
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (2, n)).astype(np.float32)
    path = write_audio(tmp_path / "a.wav", audio, 44100, bits)
    assert tag_file(path, Tags("t", "d", "s"))
    assert tag_file(path, Tags("t", "d", "s"))  # replaced, not added
    chunks = wav_chunks(path) or []
    ids = [c.id for c in chunks]
    if bits == 32:
        (fact,) = [c for c in chunks if c.id == b"fact"]
        with path.open("rb") as f:
            f.seek(fact.offset)
            assert struct.unpack("<I", f.read(4))[0] == n
        assert ids.index(b"fact") < ids.index(b"data")
    else:
        assert b"fact" not in ids
    info = sf.info(str(path))
    assert info.frames == n and info.subtype == {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}[bits]
    np.testing.assert_array_equal(sf.read(str(path), dtype="float32", always_2d=True)[0].T
                                  if bits == 32 else 0, audio if bits == 32 else 0)


def _tone_scene(tmp_path: Path, extra: str = "", master: str = "loudness: -20 LUFS") -> Path:
    sr = 48000
    t = np.arange(3 * sr) / sr
    wav(tmp_path / "hum.wav", 0.2 * np.sin(2 * np.pi * 220 * t), sr)
    scene = tmp_path / "hum.yaml"
    scene.write_text(f"name: hum\nduration: 4 s\nsample_rate: {sr}\nelements:\n"
                     f"  hum: {{file: hum.wav, loop: true, volume: -6 dB}}\n{extra}"
                     f"master: {{{master}}}\n")
    return scene


def test_manifest_bit_depth_is_what_was_written(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundscape.cli import app

    scene = _tone_scene(tmp_path)
    for fmt, bits, want in [("wav", None, 24), ("wav", 16, 16), ("flac", None, 24),
                            ("ogg", None, None)]:
        (res,) = render(scene, out=tmp_path / f"{fmt}{bits}", fmt=fmt, bit_depth=bits)
        assert json.loads(res.manifest_path.read_text())["bit_depth"] == want
        if want is not None:
            assert sf.info(str(res.directory / f"mix.{fmt}")).subtype == f"PCM_{want}"
    r = CliRunner().invoke(app, ["render", str(scene), "--format", "ogg", "--bit-depth", "16",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        "Error: hum: --bit-depth 16: ogg files are lossy and have no bit depth; leave out "
        "--bit-depth, or use --format wav or flac"]
    assert not (tmp_path / "x").exists()


def test_pre_master_lufs_is_the_sum_before_the_master_effects(tmp_path: Path) -> None:
    import pyloudnorm

    scene = _tone_scene(tmp_path, "", "loudness: -20 LUFS, effects: [{gain: {gain: 9 dB}}]")
    (res,) = render(scene, out=tmp_path / "o", bit_depth=32)
    m = json.loads(res.manifest_path.read_text())
    stem, sr = sf.read(str(res.directory / "stems/hum.wav"))
    before = pyloudnorm.Meter(sr).integrated_loudness(stem)  # the one stem is the sum
    assert m["mix"]["pre_master_lufs"] == pytest.approx(before, abs=0.1)
    assert m["mix"]["loudness_lufs"] == pytest.approx(-20, abs=0.5)


def test_the_summary_names_only_the_exports_asked_for(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundscape.cli import app

    scene = _tone_scene(tmp_path)
    r = CliRunner().invoke(app, ["render", str(scene), "--loops", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "hum: wrote 1 export file(s) (loops)" in r.stdout.splitlines()


def test_a_local_model_folder_is_named_by_its_hash_not_its_path(tmp_path: Path,
                                                                tiny_model: Path) -> None:
    from mutagen.flac import FLAC
    from wavinfo import WavInfoReader

    scene = tmp_path / "drip.yaml"
    scene.write_text("name: drip\nduration: 2 s\nelements:\n"
                     "  drip: {prompt: a drip, duration: 1 s, at: 0.5 s}\n")
    for fmt in ("wav", "flac"):
        (res,) = render(scene, out=tmp_path / fmt, fmt=fmt, model=str(tiny_model))
        mix = res.directory / f"mix.{fmt}"
        texts = [res.manifest_path.read_text()]
        if fmt == "wav":
            info = WavInfoReader(mix)
            texts += [info.info.comment, info.ixml.raw_xml.find("USER").text]
        else:
            texts += [f"{k}={v}" for k, v in FLAC(mix).tags or []]
        blob = "\n".join(texts)
        assert str(tiny_model) not in blob and "model=dir:" in blob
        assert json.loads(texts[0])["model"].startswith("dir:")
