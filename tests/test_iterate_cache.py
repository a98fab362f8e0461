"""An edit is heard quickly: the pre-master sum and the page's overviews are kept between renders
(``outputs.sumcache``, ``outputs.page``), and what an edit redoes still equals a fresh render."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import soundscape.outputs.page as page_module
import soundscape.pipelines.render as render_module
from soundscape.audio_io import read_audio
from soundscape.outputs import sumcache
from soundscape.pipelines.render import render
from tests.conftest import wav

SCENE = """\
name: it
duration: 4 s
sample_rate: {sr}
channels: {channels}
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 300 ms}}, volume: {bed}}}
  drip: {{file: drip.wav, scatter: {{interval: [0.5 s, 1.5 s], pan_jitter: 0.5}}}}
  tone: {{file: tone.wav, at: 1 s, volume: -6 dB, effects: [{{lowpass: {{cutoff: 2 kHz}}}}]}}
master: {{loudness: -20 LUFS}}
"""
# the edited mix against a fresh render: the subtracted stem's rounding (half a step of its
# bit depth) times the master's gain, and the mix's own rounding (seen: 1.2e-7 at 24 and 32
# bits, two steps of a 24-bit mix; 3.1e-5 at 16 bits, one step)
TOLERANCE = {24: 5e-7, 32: 5e-7, 16: 1e-4}


def write_takes(root: Path) -> None:
    """The scene's recordings: a noise bed, a drip and a 997 Hz tone, each at its own rate."""
    rng = np.random.default_rng(1)
    wav(root / "bed.wav", rng.normal(0, 0.1, 22050 * 2), 22050)
    wav(root / "drip.wav", rng.normal(0, 0.3, 4000) * np.hanning(4000), 16000)
    t = np.arange(48000) / 48000
    wav(root / "tone.wav", 0.5 * np.sin(2 * np.pi * 997 * t) * np.hanning(48000), 48000)


def write_scene(root: Path, sr: int, channels: int, bed: str = "-6 dB") -> Path:
    write_takes(root)
    path = root / "it.yaml"
    path.write_text(SCENE.format(sr=sr, channels=channels, bed=bed))
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kept stems the render reads back whole into the sum (what the cached sum saves)."""
    seen: list[str] = []
    real = render_module.add_stem_file

    def spy(path: Path, mix: Any, *a: Any) -> None:
        seen.append(Path(path).stem)
        real(path, mix, *a)

    monkeypatch.setattr(render_module, "add_stem_file", spy)
    return seen


def index(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "it" / sumcache.CACHE_DIR /
                                       sumcache.INDEX_FILE).read_text())
    return data


def mix_of(res: Any) -> np.ndarray:
    return read_audio(res.mix)[0]


@pytest.mark.parametrize("sr,channels,bit_depth", [(22050, 1, 24), (44100, 2, 16),
                                                   (48000, 2, 24), (96000, 2, 32)])
def test_edited_mix_equals_a_fresh_render(tmp_path: Path, reads: list[str], sr: int,
                                          channels: int, bit_depth: int) -> None:
    scene = write_scene(tmp_path, sr, channels)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1, bit_depth=bit_depth)
    assert index(out)["edits"] == 0 and sorted(index(out)["stems"]) == ["bed", "drip", "tone"]
    reads.clear()
    scene.write_text(SCENE.format(sr=sr, channels=channels, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1, bit_depth=bit_depth)
    assert reads == []  # the kept stems were not read back: the cached sum holds them
    assert index(out)["edits"] == 1
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=bit_depth)
    a, b = mix_of(res), mix_of(fresh)
    assert a.shape == b.shape == (channels, 4 * sr)
    assert float(np.abs(a - b).max()) <= TOLERANCE[bit_depth]
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)
    # the cached sum is the stems' sum (each read back within its rounding)
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    cached = np.fromfile(out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE, np.float32)
    cached = cached.reshape(channels, -1)  # a row per channel
    assert float(np.abs(cached - stems).max()) <= 3 * TOLERANCE[bit_depth]


def test_edits_in_a_row_are_rebuilt_from_the_stems_after_max_edits(
        tmp_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sumcache, "MAX_EDITS", 2)
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    for k, volume in enumerate(["-7 dB", "-8 dB", "-9 dB"]):
        reads.clear()
        scene.write_text(SCENE.format(sr=48000, channels=2, bed=volume))
        [res] = render(scene, out=out, jobs=1)
        if k < 2:
            assert reads == [] and index(out)["edits"] == k + 1
        else:  # the third: from the stems again, and the count starts over
            assert sorted(reads) == ["drip", "tone"] and index(out)["edits"] == 0
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def _garbage_index(d: Path) -> None:
    (d / sumcache.INDEX_FILE).write_text("{not json")


def _truncated_sum(d: Path) -> None:
    p = d / sumcache.SUM_FILE
    p.write_bytes(p.read_bytes()[:-8])


def _rewritten_sum(d: Path) -> None:  # same size, other samples, written after the index
    p = d / sumcache.SUM_FILE
    st = p.stat()
    p.write_bytes(np.full(st.st_size // 4, 0.25, np.float32).tobytes())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _wrong_key(d: Path) -> None:  # the index says the sum holds another drip than the stem's
    data = json.loads((d / sumcache.INDEX_FILE).read_text())
    data["stems"]["drip"] = "0" * 64
    (d / sumcache.INDEX_FILE).write_text(json.dumps(data))


def _no_index(d: Path) -> None:  # as a render killed between its start and its end leaves it
    (d / sumcache.INDEX_FILE).unlink()


@pytest.mark.parametrize("damage", [_garbage_index, _truncated_sum, _rewritten_sum, _wrong_key,
                                    _no_index])
def test_a_damaged_or_mismatched_cache_is_not_trusted(tmp_path: Path, reads: list[str],
                                                      damage: Any) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    damage(out / "it" / sumcache.CACHE_DIR)
    reads.clear()
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert sorted(reads) == ["drip", "tone"]  # rebuilt from the stems
    assert index(out)["edits"] == 0
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def interrupted_edit(scene: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit the bed's volume and render into ``out``, interrupted (Ctrl-C) where the master
    begins: the bed's difference is already in the sum."""
    real = render_module.master_bus

    def fail(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(render_module, "master_bus", fail)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    with pytest.raises(KeyboardInterrupt):
        render(scene, out=out, jobs=1)
    monkeypatch.setattr(render_module, "master_bus", real)


def test_a_failed_render_leaves_no_trusted_sum(tmp_path: Path, reads: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    interrupted_edit(scene, out, monkeypatch)
    assert not (out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE).exists()
    reads.clear()
    [res] = render(scene, out=out, jobs=1)
    assert sorted(reads) == ["drip", "tone"]
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def test_a_loopable_or_lossy_render_keeps_no_sum(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    assert (out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE).is_file()
    render(scene, out=out, jobs=1, loopable=True)  # the sum then holds folded tails
    assert not (out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE).exists()
    render(scene, out=out, jobs=1, fmt="ogg")
    assert not (out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE).exists()


# --- the page's overviews ----------------------------------------------------------------------


@pytest.fixture
def overviews(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose overview is computed (read back), by name."""
    seen: list[str] = []
    real = page_module.overview

    def spy(path: Any, *a: Any, **k: Any) -> Any:
        seen.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(page_module, "overview", spy)
    return seen


def embedded(out: Path) -> dict[str, Any]:
    text = (out / "it" / page_module.PAGE).read_text(encoding="utf-8")
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def test_page_reads_only_the_files_that_changed(tmp_path: Path, overviews: list[str]) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    # the stems' and the mix's overviews are gathered as they are written, never read back
    assert overviews == []
    before = embedded(out)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    render(scene, out=out, jobs=1)
    assert overviews == []
    after = embedded(out)
    # as the file reads back, but for a bin whose level lies on a half dB (the file's rounding
    # may tip it to the next whole dB)
    mix_read = page_module.overview(out / "it/mix.wav")
    for k in ("peak_db", "rms_db"):
        ours, theirs = np.array(after["mix_overview"][k]), np.array(mix_read[k])
        assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 0.005
    assert after["mix_overview"]["bins"] == mix_read["bins"]
    assert after["mix_overview"]["source"]["bytes"] == (out / "it/mix.wav").stat().st_size
    for name in ("drip", "tone"):  # kept as they were, source and all
        assert after["overviews"][name] == before["overviews"][name]
    # the bed is 6 dB lower: its overview says so (a stale one would not)
    old, new = (np.array(x["overviews"]["bed"]["rms_db"]) for x in (before, after))
    heard = old > -60
    assert np.median(new[heard] - old[heard]) == pytest.approx(-6, abs=1)
    bed_read = page_module.overview(out / "it/stems/bed.wav")
    assert after["overviews"]["bed"]["file"] == "stems/bed.wav"
    for k in ("peak_db", "rms_db"):
        ours, theirs = np.array(after["overviews"]["bed"][k]), np.array(bed_read[k])
        assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 0.005


def test_page_reads_a_replaced_file_again(tmp_path: Path, overviews: list[str]) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    before = embedded(out)
    tone = out / "it/stems/tone.wav"
    data = bytearray(tone.read_bytes())
    at = data.find(b"data") + 8 + 72000 * 6  # 1.5 s into the samples (24-bit stereo)
    data[at:at + 60000] = bytes(60000)  # 0.2 s of silence there, by hand
    tone.write_bytes(bytes(data))  # same key and size: only its time says it changed
    overviews.clear()
    render_module.write_page(out / "it")
    assert overviews == ["tone.wav"]
    old, new = (np.array(x["overviews"]["tone"]["peak_db"]) for x in (before, embedded(out)))
    silenced = (new == page_module.FLOOR_DB) & (old > -40)
    assert 103 <= silenced.sum() <= 105 and (new[~silenced] == old[~silenced]).all()
    (out / "it" / page_module.PAGE).write_text("<html>not a page</html>")
    overviews.clear()
    render_module.write_page(out / "it")
    assert sorted(overviews) == ["bed.wav", "drip.wav", "mix.wav", "tone.wav"]


# --- the master: a gain scales what it measured ------------------------------------------------


def _quiet_then_quieter(sr: int, channels: int) -> np.ndarray:
    """10 s of noise at -64 LUFS, then 10 s 8 dB under it, under the absolute gate (-70 LUFS):
    at the gain that brings it to -20 LUFS the second half is above that gate and within 10 LU
    of the first, so it counts, and the loudness is not the sum's moved by the gain."""
    from soundscape.dsp.meter import measure

    x = np.random.default_rng(4).normal(0, 1, (channels, 20 * sr)).astype(np.float32)
    x *= np.float32(10 ** ((-64 - measure(x, sr, true_peak=False).integrated_loudness()) / 20))
    x[:, 10 * sr:] *= np.float32(10 ** (-8 / 20))
    return x


@pytest.mark.parametrize("sr,channels", [(22050, 1), (44100, 2), (48000, 2), (96000, 1)])
def test_a_master_the_limiter_leaves_alone_is_the_sum_times_the_gain(sr: int,
                                                                   channels: int) -> None:
    import pyloudnorm

    from soundscape.dsp.bus import Bus
    from soundscape.dsp.meter import measure
    from soundscape.master import master_bus

    x = _quiet_then_quieter(sr, channels)
    blocks: list[np.ndarray] = []
    with Bus(channels, x.shape[1], array=x.copy()) as bus:
        report = master_bus(bus, sr, -20.0, -1.0, (), blocks.append)
    out = np.concatenate(blocks, axis=1)
    gain = np.float32(10 ** (report.gain_db / 20))
    assert report.limiter_reduction_db == 0.0 and report.gain_db > 30
    assert np.array_equal(out, x * gain)  # exactly: nothing else touched it
    # the loudness the report gives is what the output measures, the quieter half included
    # (10 s above the gate now): an independent meter agrees, and it is not the sum's + gain
    theirs = pyloudnorm.Meter(sr).integrated_loudness(out.T.astype(np.float64))
    assert report.output_lufs == pytest.approx(theirs, abs=0.05)
    assert report.output_lufs < report.input_lufs + report.gain_db - 0.5
    assert report.true_peak_dbtp == pytest.approx(measure(out, sr).true_peak_db, abs=1e-3)


def test_master_effects_leave_a_kept_sum_as_it_was() -> None:
    from soundscape.dsp.bus import Bus
    from soundscape.dsp.effects import EffectSpec
    from soundscape.master import master_bus

    sr = 48000
    x = np.random.default_rng(5).normal(0, 0.05, (2, 6 * sr)).astype(np.float32)
    effects = (EffectSpec("lowpass", (("cutoff", 2000.0),)),)
    outs = []
    for keep in (False, True):
        blocks: list[np.ndarray] = []
        with Bus(2, x.shape[1], array=x.copy()) as bus:
            master_bus(bus, sr, -20.0, -1.0, effects, blocks.append, keep_sum=keep)
            assert np.array_equal(bus.array, x) == keep  # type: ignore[arg-type]
        outs.append(np.concatenate(blocks, axis=1))
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("sr,channels", [(22050, 2), (44100, 1), (48000, 2), (96000, 2)])
def test_the_updated_sum_is_measured_as_the_master_would(sr: int, channels: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import pyloudnorm

    from soundscape.dsp.bus import Bus
    from soundscape.dsp.meter import measure
    from soundscape.master import measure_sum

    # a peaky tone and noise: inter-sample peaks above the samples, a level that moves
    rng = np.random.default_rng(6)
    t = np.arange(12 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * (sr / 4) * t + np.pi / 4) * (1.5 + np.sin(2 * np.pi * t / 4))
         + rng.normal(0, 0.01, (channels, t.size))).astype(np.float32)
    with Bus(channels, x.shape[1], array=x.copy()) as bus, ThreadPoolExecutor(2) as pool:
        got = measure_sum(bus, sr, pool)
    ours = measure(x, sr)
    assert got.true_peak_db == pytest.approx(ours.true_peak_db, abs=1e-6)
    assert got.true_peak_db > 20 * np.log10(np.abs(x).max()) + 2  # between the samples
    assert got.loudness.sample_peak == pytest.approx(float(np.abs(x).max()))
    theirs = pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64))
    assert got.loudness.integrated_loudness() == pytest.approx(theirs, abs=0.05)


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "file"])
@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2), (96000, 2)])
def test_the_one_pass_update_equals_subtract_render_add(tmp_path: Path, sr: int, channels: int,
                                                        on_disk: bool) -> None:
    """An edit's sum, updated in the pass that renders the changed stem (its blocks with
    silent stretches between them, where ``add`` is not called), is to the bit the sum the
    three passes leave (subtract the old stems, add the new one, add a kept stem read back),
    and is measured as ``measure_sum`` measures that sum."""
    from concurrent.futures import ThreadPoolExecutor

    from soundscape.dsp.bus import Bus
    from soundscape.master import measure_sum
    from soundscape.mixer.workers import add_stem_file

    rng = np.random.default_rng(sr + channels)
    frames = 3 * sr + 123
    start = (rng.normal(0, 0.2, (channels, frames))
             * np.sin(np.arange(frames) / sr * 9)).astype(np.float32)
    old = [rng.normal(0, 0.1, (channels, frames)).astype(np.float32) for _ in range(2)]
    kept = rng.normal(0, 0.05, (channels, frames)).astype(np.float32)
    paths = [wav(tmp_path / f"old{i}.wav", a, sr) for i, a in enumerate(old)]
    kept_path = wav(tmp_path / "kept.wav", kept, sr)
    new = np.zeros((channels, frames), np.float32)
    third = frames // 3
    pieces = [(500, third), (third + 9000, 1000), (2 * third, frames - 2 * third - 700)]
    for a, n in pieces:
        new[:, a:a + n] = rng.normal(0, 0.3, (channels, n))

    def bus(name: str) -> Bus:
        if on_disk:
            b = Bus.named(channels, frames, tmp_path / name, create=True)
            b.write(0, start)
            return b
        return Bus(channels, frames, array=start.copy())

    from pedalboard.io import AudioFile

    with bus("three.f32") as three, ThreadPoolExecutor(2) as pool:
        with AudioFile(str(paths[0])) as f0, AudioFile(str(paths[1])) as f1:
            sumcache.subtract(three, [f0, f1])
        for a, n in pieces:
            three.add(a, new[:, a:a + n])
        add_stem_file(kept_path, three)
        want = three.read(0, frames)
        levels_three = measure_sum(three, sr, pool)
    with bus("one.f32") as one, ThreadPoolExecutor(2) as pool, \
            AudioFile(str(paths[0])) as f0, AudioFile(str(paths[1])) as f1, \
            AudioFile(str(kept_path)) as k:
        update = sumcache.Update(one, [f0, f1], [k], sr, pool)
        for a, n in pieces:
            update.add(a, new[:, a:a + n])
        with pytest.raises(ValueError, match="time order"):
            update.add(0, new[:, :10])
        levels = update.finish()
        got = one.read(0, frames)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, start - old[0] - old[1] + new + kept, atol=1e-6)
    assert levels.true_peak_db == levels_three.true_peak_db
    assert levels.loudness.sample_peak == levels_three.loudness.sample_peak
    assert levels.loudness.integrated_loudness() == pytest.approx(
        levels_three.loudness.integrated_loudness(), abs=1e-9)


def _resident(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (mincore(2) on a mapping of it)."""
    import ctypes
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    view = ctypes.c_char.from_buffer(mm)
    try:
        assert libc.mincore(ctypes.addressof(view), size, vec) == 0, ctypes.get_errno()
    finally:
        del view
        mm.close()
    return sum(v & 1 for v in vec) / pages


def _on_tmpfs(path: Path) -> bool:
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    best = max((m for m in mounts if str(path.resolve()).startswith(m[1])),
               key=lambda m: len(m[1]))
    return best[2] == "tmpfs"


@pytest.mark.skipif(sys.platform != "linux", reason="the page cache is read by mincore(2)")
def test_a_replaced_stem_leaves_the_page_cache_as_it_is_read(tmp_path: Path) -> None:
    """An edit reads the earlier file of the stem it replaces once, in order, to take it out of
    the sum: what has been read is dropped from the page cache behind the reading, for the new
    stem's pages to reuse (``forget_cached``), and the samples are the file's all the same. A
    kept stem read into the sum stays cached."""
    import tempfile
    from types import SimpleNamespace

    from soundscape.dsp.bus import BLOCK

    # tmpfs holds its files in the page cache: a file there cannot leave it
    with tempfile.TemporaryDirectory(dir=Path.cwd() if _on_tmpfs(tmp_path) else tmp_path) as d:
        sr, frames = 48000, 48000 * 150  # 43 MB at 24 bits
        audio = np.random.default_rng(5).normal(0, 0.1, (2, frames)).astype(np.float32)
        paths = [wav(Path(d) / f"{name}.wav", audio, sr) for name in ("old", "kept")]
        want = read_audio(paths[0])[0]
        read_audio(paths[1])
        assert min(map(_resident, paths)) > 0.99
        out = SimpleNamespace(channels=2, frames=frames)
        for path, replaced in zip(paths, (True, False), strict=True):
            with sumcache.open_stem(path, out, replaced=replaced) as f:
                got = np.concatenate([sumcache._read_exact(f, min(BLOCK, frames - s), s, frames)
                                      for s in range(0, frames, BLOCK)], axis=1)
            np.testing.assert_array_equal(got, want)
        assert _resident(paths[1]) > 0.99
        assert _resident(paths[0]) < 0.3  # what is left: the last 12 MB at most


@pytest.fixture
def sum_on_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every sum goes to a file, as a long scene's does (a 4 s one is held in memory), and the
    edits' second measuring processes are counted."""
    import soundscape.dsp.bus as bus_module

    monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    started: list[int] = []
    real = sumcache._SecondProcess.__init__

    def spy(self: Any, *a: Any, **k: Any) -> None:
        real(self, *a, **k)
        started.extend(self.pids)

    monkeypatch.setattr(sumcache._SecondProcess, "__init__", spy)
    return started


@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2), (96000, 2)])
def test_an_edit_of_a_sum_on_disk_is_measured_beside_the_pass(
        tmp_path: Path, sum_on_disk: list[int], sr: int, channels: int) -> None:
    scene = write_scene(tmp_path, sr, channels)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=sr, channels=channels, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    # the edit's sum was measured by other processes: its true peak, and its loudness in
    # one (mono) or two (each K-weighting half of the channels)
    assert len(sum_on_disk) == (2 if channels == 1 else 3)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)
    assert res.manifest.mix.pre_master_lufs == pytest.approx(fresh.manifest.mix.pre_master_lufs,
                                                           abs=1e-3)


def test_a_failed_measurement_is_one_error_line_and_leaves_no_process(
        tmp_path: Path, sum_on_disk: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from soundscape.cli import app
    from soundscape.dsp.meter import Meter

    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))

    class Broken(Meter):
        def add(self, block: np.ndarray) -> None:
            raise MemoryError("no room for the meter")

    monkeypatch.setattr(sumcache, "Meter", Broken)  # the forked process measures with it
    result = CliRunner().invoke(app, ["render", str(scene), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "measuring the mix failed: MemoryError: no room for the meter" in lines[0]
    assert "Traceback" not in result.output
    assert len(sum_on_disk) == 3  # the true peak, and the loudness of each channel
    for pid in sum_on_disk:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, not left running
    assert not (out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE).exists()


def _stem_figures(res: Any) -> dict[str, tuple[float, float, float]]:
    return {e.element: (e.loudness_lufs, e.true_peak_dbtp, e.sample_peak) for e in res.elements}


@pytest.mark.parametrize("sr,channels", [(22050, 1), (44100, 2), (48000, 2), (96000, 1)])
def test_a_volume_edit_scales_the_stems_measurements_as_a_fresh_render_reads_them(
        tmp_path: Path, sr: int, channels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stem that changed only in volume is not measured again: its earlier figures are
    scaled (the K-weighting and the interpolation are linear), and read as a fresh render's.
    A change that is not only the volume (an effect) is measured anew."""
    from soundscape.dsp.meter import Meter

    scene = write_scene(tmp_path, sr, channels)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    measured: list[int] = []
    real_add = Meter.add
    monkeypatch.setattr(Meter, "add", lambda self, b: (measured.append(b.shape[1]),
                                                       real_add(self, b))[1])
    scene.write_text(SCENE.format(sr=sr, channels=channels, bed="-13.5 dB"))
    [res] = render(scene, out=out, jobs=1)
    stem_frames = sum(measured)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    ours, theirs = _stem_figures(res), _stem_figures(fresh)
    for name in ("bed", "drip", "tone"):
        for a, b in zip(ours[name], theirs[name], strict=True):
            assert a == pytest.approx(b, abs=1e-3), name
    assert ours["bed"][0] == pytest.approx(theirs["bed"][0], abs=1e-3)
    # the edit measured the sum (its loudness, then its true peak: twice its 4 s) and
    # nothing of the bed's stem (another 4 s)
    assert stem_frames <= 2 * 4 * sr
    # an effect on the bed: not only its volume, so measured again, as fresh reads it
    scene.write_text(SCENE.format(sr=sr, channels=channels, bed="-13.5 dB, effects: "
                                  "[{lowpass: {cutoff: 1 kHz}}]"))
    [res] = render(scene, out=out, jobs=1)
    [fresh] = render(scene, out=tmp_path / "fresh2", jobs=1)
    for a, b in zip(_stem_figures(res)["bed"], _stem_figures(fresh)["bed"], strict=True):
        assert a == pytest.approx(b, abs=1e-3)


def test_kept_takes_are_the_conformed_takes_and_go_with_their_element(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The render folder keeps each element's conformed takes (and the loop points found in
    them) for its next render, reads them instead of conforming again, makes a damaged one
    again, and removes those of an element that changed or went."""
    from soundscape.takes import conform as conform_module

    scene = write_scene(tmp_path, 44100, 2)
    out = tmp_path / "o"
    [first] = render(scene, out=out, jobs=1)
    folder = out / "it" / sumcache.CACHE_DIR / sumcache.TAKES_DIR
    kept = sorted(folder.glob("*.npz"))
    assert len(kept) == 3
    loops = list(folder.glob("*.loops.json"))
    assert len(loops) == 1  # the bed loops: its loop points are kept
    bed = json.loads(loops[0].read_text())["loops"]
    seams = [pl for pl in first.manifest.element("bed").placements  # type: ignore[union-attr]
             if "seams_s" in pl]
    assert bed and seams and seams[0]["seams_s"]
    conformed: list[str] = []
    real = conform_module.conform

    def spy(audio: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
        conformed.append("x")
        return real(audio, sr, sample_rate)

    monkeypatch.setattr(conform_module, "conform", spy)
    kept[0].write_bytes(b"not an npz")  # damaged: made again
    scene.write_text(SCENE.format(sr=44100, channels=2, bed="-9 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert len(conformed) == 1
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]
    assert res.manifest.element("bed").placements == \
        fresh.manifest.element("bed").placements  # type: ignore[union-attr]
    assert sorted(folder.glob("*.npz")) == kept
    # the tone's file changes: its kept takes go, the new ones come
    wav(tmp_path / "tone.wav", np.zeros((1, 4410), np.float32) + 0.1, 44100)
    render(scene, out=out, jobs=1)
    now = sorted(folder.glob("*.npz"))
    assert len(now) == 3 and len(set(now) & set(kept)) == 2
    # a lossy render keeps nothing (no sum, no takes)
    render(scene, out=out, jobs=1, fmt="mp3")
    assert not folder.exists()


@pytest.mark.parametrize("bits", [16, 24])
def test_the_peak_after_a_volume_edit_is_a_level_the_new_sum_reaches(bits: int) -> None:
    """Also for quiet sums (peaks down to -80 dBFS), where a step of the stems' bit depth
    is no longer small beside the peak."""
    rng = np.random.default_rng(bits)
    step = 2.0 ** -(bits - 1)
    for _ in range(400):
        n = int(rng.integers(50, 400))
        level = 10 ** rng.uniform(-4, 0)
        stem = rng.normal(0, rng.uniform(0.01, 1) * level, n)
        rest = rng.normal(0, rng.uniform(0.01, 1) * level, n)
        total = (rest + stem).astype(np.float32)
        gain = float(10 ** (rng.uniform(-20, 20) / 20))
        filed = np.floor(stem / step) * step  # the stem as its file reads back (floored)
        new = total - filed + gain * stem
        level = {"sample_peak": float(np.abs(stem).max()), "level_free": "k", "volume_db": 0.0}
        cached = sumcache.CachedSum({}, 0, {}, {"e": level}, float(np.abs(total).max()))
        floor = cached.peak_after("e", "k", 20 * math.log10(gain), step)
        assert 0 <= floor <= float(np.abs(new).max())


def test_a_volume_edit_reads_the_true_peak_between_the_samples(
        tmp_path: Path, sum_on_disk: list[int]) -> None:
    """A sum whose true peak lies 3 dB over its samples (a tone at a quarter of the rate, at
    45 degrees): the edit's measuring process, starting from the level the sum is known to
    reach, still reads the peak between the samples as a fresh render does."""
    sr = 48000
    t = np.arange(4 * sr) / sr
    wav(tmp_path / "bed.wav", 0.5 * np.sin(2 * np.pi * sr / 4 * t + np.pi / 4), sr)
    wav(tmp_path / "drip.wav", np.zeros((1, 100), np.float32), sr)
    wav(tmp_path / "tone.wav", 0.05 * np.sin(2 * np.pi * 440 * t[:sr]), sr)
    scene = tmp_path / "it.yaml"
    scene.write_text(SCENE.format(sr=sr, channels=2, bed="-6 dB"))
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=sr, channels=2, bed="-9 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert len(sum_on_disk) == 3  # measured by other processes
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)
    sample_peak = 20 * np.log10(np.abs(mix_of(res)).max())
    assert res.mix_true_peak_dbtp > sample_peak + 2  # the peak is between the samples


def test_an_element_renamed_is_one_removed_and_one_new(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, 22050, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=22050, channels=2, bed="-6 dB").replace("tone:", "hum:"))
    [res] = render(scene, out=out, jobs=1)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert sorted(res.stems) == ["bed", "drip", "hum"]
    assert not (out / "it" / "stems" / "tone.wav").exists()
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def test_a_volume_edit_imports_no_scipy_signal(tmp_path: Path) -> None:
    """scipy.signal is 0.4 s to import: neither a full render of loops and one-shots (the DC
    blocker and the loop search run on numpy) nor the edit a user makes most (one element's
    level: it conforms nothing, searches no loop, measures no stem; its sum on disk is
    measured by other processes) imports it in the render's own process."""
    import subprocess
    import sys

    from tests.conftest import env_without_pytest

    scene = write_scene(tmp_path, 48000, 2)
    script = (
        "import sys\n"
        "import soundscape.dsp.bus as b\n"
        "b.IN_MEMORY_BYTES = 1024\n"  # the sum on disk, as a long scene's
        "from soundscape.pipelines.render import render\n"
        f"render({str(scene)!r}, out={str(tmp_path / 'o')!r}, jobs=1)\n"
        "print(*(m in sys.modules for m in ('scipy.signal', 'pyloudnorm', 'numpy.ma', "
        "'xml.sax')))\n")
    run = [sys.executable, "-c", script]
    env = env_without_pytest()
    first = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    # a full render conforms its takes and searches its loops; loudness is measured with
    # pedalboard's filters, nowhere with pyloudnorm's; neither the overviews (np.unique) nor
    # the tags (xml.sax's escape) import what they do not need (8-9 ms each)
    assert first.stdout.split() == ["False"] * 4, first.stderr
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-2 dB"))
    edit = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    assert edit.stdout.split() == ["False"] * 4, edit.stderr
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert read_audio(tmp_path / "o/it/mix.wav")[0].shape == mix_of(fresh).shape
    assert float(np.abs(read_audio(tmp_path / "o/it/mix.wav")[0] - mix_of(fresh)).max()) \
        <= TOLERANCE[24]


def test_the_index_keeps_the_stems_energies_exactly_and_survives_a_damaged_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stems' 100 ms energies are kept packed (base64 float64): read back, they are the
    meter's own values to the bit. One that does not decode is measured again, not scaled,
    and the edit still reads as a fresh render."""
    from soundscape.dsp.meter import Meter

    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    finished: list[list[float]] = []
    real_finish = Meter.finish

    def finish(self: Meter) -> Meter:
        done = real_finish(self)
        finished.append(list(done.energies))
        return done

    monkeypatch.setattr(Meter, "finish", finish)
    render(scene, out=out, jobs=1)
    data = index(out)
    kept = sumcache.read(out / "it", render_module.Output(48000, 2, 4 * 48000, "wav", None))
    assert kept is not None
    for name in ("bed", "drip", "tone"):
        assert isinstance(data["levels"][name]["energies"], str)  # packed in the file
        got = kept.levels[name]["energies"]
        assert len(got) == 40 and any(got == e for e in finished), name
    data["levels"]["bed"]["energies"] = "not base64!"
    (out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE).write_text(json.dumps(data))
    measured: list[int] = []
    real_add = Meter.add
    monkeypatch.setattr(Meter, "add", lambda self, b: (measured.append(b.shape[1]),
                                                       real_add(self, b))[1])
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-13.5 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert sum(measured) > 2 * 4 * 48000  # the bed's stem measured again, beside the sum
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    for a, b in zip(_stem_figures(res)["bed"], _stem_figures(fresh)["bed"], strict=True):
        assert a == pytest.approx(b, abs=1e-3)


AUTOMATED = SCENE.replace(
    "  tone: {{file: tone.wav,",
    "  tone: {{file: tone.wav, automation: [{{time: 0 s, level: 0 dB}}, "
    "{{time: 3 s, level: -12 dB}}],")


@pytest.mark.parametrize("sr,channels,bit_depth", [(22050, 1, 16), (44100, 2, 24),
                                                   (48000, 2, 16), (96000, 1, 24)])
@pytest.mark.parametrize("edited", ["bed", "drip", "tone"])
def test_a_volume_edit_takes_the_earlier_stem_out_of_the_sum_exactly_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sr: int, channels: int,
        bit_depth: int, edited: str) -> None:
    """An element whose only change is its volume (a loop bed, scattered plays with pans of
    their own, a one-shot under automation) leaves the sum at its earlier volume as the new
    stem goes in: its earlier file is not opened, and the sum holds no file's rounding (at 16
    bits a subtracted file left up to 3e-5): it is a fresh render's sum to float rounding. An
    effect change still takes the earlier file out."""
    opened: list[str] = []
    real_open = sumcache.open_stem

    def spy(path: Path, out: Any, replaced: bool = False) -> Any:
        if replaced:
            opened.append(Path(path).stem)
        return real_open(path, out, replaced)

    monkeypatch.setattr(sumcache, "open_stem", spy)
    write_takes(tmp_path)
    scene = tmp_path / "it.yaml"
    volumes = {"bed": "-6 dB", "drip": "0 dB", "tone": "-6 dB"}

    def write(**change: str) -> None:
        v = {**volumes, **change}
        text = AUTOMATED.format(sr=sr, channels=channels, bed=v["bed"])
        text = text.replace("at: 1 s, volume: -6 dB", f"at: 1 s, volume: {v['tone']}")
        text = text.replace("scatter:", f"volume: {v['drip']}, scatter:")
        scene.write_text(text)

    write()
    out = tmp_path / "o"
    render(scene, out=out, jobs=1, bit_depth=bit_depth)
    write(**{edited: "-10.5 dB"})
    [res] = render(scene, out=out, jobs=1, bit_depth=bit_depth)
    assert opened == []  # nothing read back to take the earlier stem out
    assert index(out)["edits"] == 1
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=bit_depth)
    shape = (channels, 4 * sr)
    ours = np.fromfile(out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE, np.float32)
    theirs = np.fromfile(tmp_path / "fresh/it" / sumcache.CACHE_DIR / sumcache.SUM_FILE,
                         np.float32)
    assert float(np.abs(ours.reshape(shape) - theirs.reshape(shape)).max()) <= 1e-6
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[bit_depth]
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    # an effect on it as well: not its volume alone, so its earlier file is taken out
    text = scene.read_text()
    target = {"bed": "loop: {crossfade: 300 ms}", "drip": "scatter:", "tone": "at: 1 s"}[edited]
    scene.write_text(text.replace(target, "effects: [{highpass: {cutoff: 200 Hz}}], " + target,
                                  1) if edited != "tone" else
                     text.replace("{lowpass: {cutoff: 2 kHz}}", "{lowpass: {cutoff: 3 kHz}}"))
    [res] = render(scene, out=out, jobs=1, bit_depth=bit_depth)
    assert opened == [edited]
    [fresh] = render(scene, out=tmp_path / "fresh2", jobs=1, bit_depth=bit_depth)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[bit_depth]
