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
            if abs(lufs - target) > 0.5:  # out of reach: said, per file, with the figure
                assert f"{row['file']}: reached {float(row['loudness_lufs']):.1f} LUFS, not " \
                       f"{target:.1f}" in " ".join(notes)
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
