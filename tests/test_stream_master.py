"""The mix bus and the streamed master: any length in flat memory, the same sound as the
whole-array master, on disk and in memory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import read_audio
from soundscape.dsp import bus as busmod
from soundscape.dsp.bus import Bus
from soundscape.dsp.effects import EffectSpec, build_board, parse_effect
from soundscape.dsp.meter import measure
from soundscape.master import (
    MIN_MAKEUP_YIELD,
    TRUE_PEAK_MARGIN_DB,
    integrated_loudness,
    limit,
    master_bus,
)
from soundscape.pipelines.render import render
from tests.conftest import wav
from tests.oracles import master

RATES = [22050, 44100, 48000, 96000]


def whole_array_master(mix: np.ndarray, sr: int, target: float | None, ceiling: float,
                       effects: tuple[EffectSpec, ...] = ()) -> tuple[np.ndarray, float]:
    """The master as it was before it streamed (the whole mix in memory): the oracle."""
    if effects:
        mix = np.ascontiguousarray(build_board(effects)(mix, sr), dtype=np.float32)
    measured = integrated_loudness(mix, sr)
    gain_db = 0.0 if target is None or math.isinf(measured) else target - measured
    out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sr, ceiling)
    if target is not None and not math.isinf(measured):
        for _ in range(3):
            now = measure(out, sr).integrated_loudness()
            if abs(now - target) <= 0.1 or reduction == 0.0:
                break
            gain_db += target - now
            out, reduction = limit(mix * np.float32(10 ** (gain_db / 20)), sr, ceiling)
            # the master stops raising the gain where it no longer raises the loudness
            if measure(out, sr).integrated_loudness() - now < MIN_MAKEUP_YIELD * (target - now):
                break
    return out, gain_db


def bursts(sr: int, channels: int, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Noise with loud bursts and clicks: the limiter has work at any target."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = rng.normal(0, 0.05, (channels, n)).astype(np.float32)
    for k in range(1, int(seconds)):
        a = k * sr - sr // 4
        x[:, a:a + sr // 8] *= 12.0
        x[:, a + sr // 2] = 0.95
    return x


@pytest.fixture(params=["memory", "disk"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "disk":
        monkeypatch.setattr(busmod, "IN_MEMORY_BYTES", 0)
    return str(request.param)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_streamed_master_equals_the_whole_array_master(sr: int, channels: int, where: str,
                                                      tmp_path: Path) -> None:
    x = bursts(sr, channels)
    ref, ref_gain = whole_array_master(x, sr, -12.0, -1.0)
    blocks: list[np.ndarray] = []
    with Bus.temporary(channels, x.shape[1], tmp_path) as bus:
        assert bus.in_memory == (where == "memory")
        bus.add(0, x)
        # the oracle's limiter is not capped: neither is this one (master.max_limiting)
        report = master_bus(bus, sr, -12.0, -1.0, (), blocks.append, tmp_path,
                            max_limiting_db=60.0)
    out = np.concatenate(blocks, axis=1)
    assert out.shape == x.shape
    assert float(np.abs(out - ref).max()) <= 1e-6
    assert report.gain_db == pytest.approx(ref_gain, abs=1e-5)
    assert report.limiter_reduction_db > 1.5  # the limiter had work to do
    assert report.true_peak_dbtp <= -1.0
    assert report.true_peak_dbtp == pytest.approx(measure(ref, sr).true_peak_db, abs=1e-4)
    assert report.output_lufs == pytest.approx(measure(ref, sr).integrated_loudness(), abs=1e-4)
    assert list(tmp_path.iterdir()) == []  # the scratch buses leave nothing behind


@pytest.mark.parametrize("sr", [22050, 48000])
def test_streamed_master_effects_equal_the_whole_array_chain(sr: int, where: str,
                                                             tmp_path: Path) -> None:
    x = bursts(sr, 2, seed=1)
    fx = tuple(parse_effect(e, None) for e in (
        {"highpass": {"cutoff": "120 Hz"}}, {"compressor": {"threshold": "-20 dB", "ratio": 3}},
        {"reverb": {"room_size": 0.5}}))
    ref, _ = whole_array_master(x, sr, -14.0, -1.0, fx)
    blocks: list[np.ndarray] = []
    with Bus.temporary(2, x.shape[1], tmp_path) as bus:
        bus.add(0, x)
        master_bus(bus, sr, -14.0, -1.0, fx, blocks.append, tmp_path, max_limiting_db=60.0)
    out = np.concatenate(blocks, axis=1)
    assert float(np.abs(out - ref).max()) <= 1e-6


def test_master_of_an_array_leaves_it_unchanged() -> None:
    x = bursts(48000, 2)
    before = x.copy()
    y, report = master(x, 48000, -12.0, -1.0)
    assert np.array_equal(x, before) and y.shape == x.shape
    assert report.true_peak_dbtp <= -1.0


@pytest.mark.parametrize("channels", [1, 2])
def test_a_bus_on_disk_adds_reads_and_writes_like_an_array(channels: int,
                                                           tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 200_003
    ref = np.zeros((channels, n), np.float32)
    with Bus.named(channels, n, tmp_path / "b.f32", create=True) as disk:
        for _ in range(20):
            a = int(rng.integers(0, n))
            block = rng.normal(0, 1, (channels, int(rng.integers(1, 30_000)))).astype(np.float32)
            block = block[:, : n - a]
            ref[:, a:a + block.shape[1]] += block
            disk.add(a, block)
        assert (tmp_path / "b.f32").stat().st_size == channels * n * 4
        got = np.concatenate([b for _, b in disk.blocks(7777)], axis=1)
        assert np.array_equal(got, ref)
        disk.write(5, np.ones((channels, 3), np.float32))
        assert np.array_equal(disk.read(4, 5)[:, 1:4], np.ones((channels, 3), np.float32))
    assert not (tmp_path / "b.f32").exists()  # removed on close


SCENE = """name: long
duration: 40 s
master: {loudness: -16 LUFS, ceiling: -1 dBTP, effects: [{highpass: {cutoff: 80 Hz}}]}
elements:
  bed: {file: bed.wav, loop: {crossfade: 1 s}, volume: -6 dB, effects: [reverb]}
  hits: {file: hit.wav, scatter: {interval: [1 s, 3 s], pan_jitter: 0.6}}
  drone: {file: bed.wav, loop: true, pan: -0.5, effects: [{delay: {time: 300 ms}}]}
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_render_on_disk_writes_the_same_files_as_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int) -> None:
    rng = np.random.default_rng(3)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.1, 48000 * 5), 48000)
    wav(tmp_path / "hit.wav", np.sin(np.arange(4800) / 3.0) * np.hanning(4800), 48000)
    (tmp_path / "s.yaml").write_text(SCENE)
    [mem] = render(tmp_path / "s.yaml", out=tmp_path / "mem", jobs=jobs)
    monkeypatch.setattr(busmod, "IN_MEMORY_BYTES", 0)
    [disk] = render(tmp_path / "s.yaml", out=tmp_path / "disk", jobs=jobs)
    a, sr = read_audio(mem.directory / "mix.wav")
    b, _ = read_audio(disk.directory / "mix.wav")
    assert a.shape == (2, 40 * sr) and np.array_equal(a, b)
    for name in ("bed", "hits", "drone"):
        assert np.array_equal(read_audio(mem.stems[name])[0], read_audio(disk.stems[name])[0])
    assert disk.manifest.mix.loudness_lufs == mem.manifest.mix.loudness_lufs
    assert abs(mem.manifest.mix.loudness_lufs + 16) <= 0.1
    leftovers = [p.name for p in (tmp_path / "disk").rglob("*") if p.name.startswith(".")
                 and p.name != ".cache"]  # .cache: the sum kept for the next edit (sumcache)
    assert leftovers == []


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_a_one_shot_read_in_pieces_is_the_whole_play(sr: int, channels: int) -> None:
    """One-shots apply gain and fades as they are read: any split into reads gives the play
    (gain, then the equal-power fades over its own length) bit for bit."""
    from soundscape.arrange import Clip
    from soundscape.dsp.fades import apply_fades
    from soundscape.mixer.element import ClipSource

    rng = np.random.default_rng(sr + channels)
    take = rng.normal(0, 0.3, (channels, 3 * sr)).astype(np.float32)
    clip = Clip("e", 0, start_s=1.0, offset_s=0.25, length_s=2.0, gain_db=-4.5,
                fade_in_s=0.3, fade_out_s=1.5)
    src = ClipSource(clip, take, sr, total=10 * sr)
    a0 = int(round(0.25 * sr))
    want = take[:, a0:a0 + 2 * sr] * np.float32(10 ** (-4.5 / 20))
    want = apply_fades(want, int(0.3 * sr), int(1.5 * sr))
    assert src.start == sr and src.length == 2 * sr
    cuts = np.unique(np.concatenate([[0, src.length], rng.integers(0, src.length, 9)]))
    pieces = zip(cuts[:-1], cuts[1:], strict=True)
    got = np.concatenate([src.read(int(a), int(b)) for a, b in pieces], axis=1)
    assert np.array_equal(got, want)
    assert got[:, 0].max() < want.max() and abs(float(got[0, -1])) < 0.01  # faded ends
    cut = ClipSource(clip, take, sr, total=2 * sr)  # the timeline ends inside the play
    short = take[:, a0:a0 + sr] * np.float32(10 ** (-4.5 / 20))
    assert cut.length == sr
    assert np.array_equal(cut.read(0, sr), apply_fades(short, int(0.3 * sr), sr))


@pytest.mark.parametrize("block", [1000, 4097, 65536 - 28])
def test_the_true_peak_does_not_depend_on_how_the_signal_is_cut(block: int) -> None:
    """Blocks that are not whole 64-frame sub-blocks once read a step to the padding's zeros
    as a gap (+1.1 dB on a 50 Hz sine), and the streamed master trimmed itself by it."""
    from soundscape.dsp.meter import Meter

    sr = 48000
    t = np.arange(2 * sr) / sr
    x = np.stack([0.5 * np.sin(2 * np.pi * 50 * t), 0.4 * np.sin(2 * np.pi * 73 * t)])
    x = x.astype(np.float32)
    whole = measure(x, sr)
    cut = Meter(sr, 2)
    for i in range(0, x.shape[1], block):
        cut.add(x[:, i:i + block])
    cut.finish()
    assert cut.true_peak == pytest.approx(whole.true_peak, abs=1e-7)
    assert whole.true_peak_db == pytest.approx(20 * math.log10(0.5), abs=0.01)


@pytest.mark.parametrize("hz", [55, 73, 80])
def test_a_loud_low_sine_is_mastered_as_the_whole_array_master_does(hz: int,
                                                                   tmp_path: Path) -> None:
    sr = 48000
    t = np.arange(3 * sr + 17) / sr
    x = np.stack([0.98 * np.sin(2 * np.pi * hz * t)] * 2).astype(np.float32)
    ref, _ = whole_array_master(x, sr, None, -1.0)
    blocks: list[np.ndarray] = []
    with Bus.temporary(2, x.shape[1], tmp_path) as bus:
        bus.add(0, x)
        report = master_bus(bus, sr, None, -1.0, (), blocks.append, tmp_path)
    assert float(np.abs(np.concatenate(blocks, axis=1) - ref).max()) <= 1e-6
    assert report.true_peak_dbtp == pytest.approx(measure(ref, sr).true_peak_db, abs=1e-4)
    # not trimmed below the ceiling's margin by a misread peak
    assert report.true_peak_dbtp > -1.0 - TRUE_PEAK_MARGIN_DB - 0.01


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_the_reported_loudness_is_the_outputs_with_or_without_limiting(sr: int,
                                                                      channels: int) -> None:
    """A pass the limiter leaves alone reports the input's loudness moved by the gain (it is
    not measured again); a limited one measures its output. Either way the report is what an
    independent meter reads of the mastered mix, within 0.01 LU."""
    import pyloudnorm

    for target, expect_limiting in ((-30.0, False), (-12.0, True)):
        mix = bursts(sr, channels, seconds=6.0, seed=3)
        chunks: list[np.ndarray] = []
        with Bus(channels, mix.shape[1], array=mix.copy()) as bus:
            report = master_bus(bus, sr, target, -1.0, (), chunks.append)
        out = np.concatenate(chunks, axis=1)
        assert (report.limiter_reduction_db > 0) == expect_limiting
        reference = pyloudnorm.Meter(sr).integrated_loudness(out.T.astype(np.float64))
        assert report.output_lufs == pytest.approx(reference, abs=0.01)
        ours = measure(out, sr).integrated_loudness()
        assert report.output_lufs == pytest.approx(ours, abs=1e-4)
        if not expect_limiting:
            assert report.output_lufs == pytest.approx(report.input_lufs + report.gain_db,
                                                       abs=1e-9)


def test_a_fresh_bus_on_disk_adds_without_reading_where_nothing_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bus file made zero for one bus: its first adds write without reading zeros back;
    where an add reaches into what was written, it reads (the sums stay exact)."""
    import os

    reads: list[int] = []
    preadv = os.preadv

    def counting(fd, buffers, offset):  # type: ignore[no-untyped-def]
        reads.append(sum(len(b) for b in buffers))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    rng = np.random.default_rng(4)
    n = 100_000
    ref = np.zeros((2, n), np.float32)
    made = Bus.named(2, n, tmp_path / "part.f32", create=True)
    with Bus.named(2, n, tmp_path / "part.f32", create=False, fresh=True) as bus:
        for a, k in [(0, 30_000), (30_000, 30_000), (70_000, 30_000)]:  # a first stem
            block = rng.normal(0, 1, (2, k)).astype(np.float32)
            bus.add(a, block)
            ref[:, a:a + k] += block
        assert reads == []
        for a, k in [(50_000, 30_000), (0, 100_000)]:  # over a gap left zero, and the rest
            block = rng.normal(0, 1, (2, k)).astype(np.float32)
            bus.add(a, block)
            ref[:, a:a + k] += block
        assert sum(reads) == 2 * 4 * (100_000 + 30_000)  # all it added into, both channels
    got = made.read(0, n)
    assert np.array_equal(got, ref)
    reads.clear()
    made.add(0, np.ones((2, 10), np.float32))  # the maker's bus reads: another wrote it
    assert reads and np.array_equal(made.read(0, 10), ref[:, :10] + 1)
    made.close()


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "file"])
def test_adding_a_part_leaves_the_sums_peak_known_and_measured_alike(
        on_disk: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``add_bus`` sees every frame of the sum it makes: it keeps the sample peak (a silent
    stretch of the part included, where the peak lies in the other), the sum's measuring skips
    its own pass for it, and reads the same figures; any later change forgets the peak."""
    from concurrent.futures import ThreadPoolExecutor

    from soundscape.master import measure_sum

    if on_disk:
        monkeypatch.setattr(busmod, "IN_MEMORY_BYTES", 1024)
    sr, n = 48000, 5 * 48000
    rng = np.random.default_rng(9)
    a = rng.normal(0, 0.1, (2, n)).astype(np.float32)
    a[1, 3 * sr + 17] = -0.93  # the peak, where the part is silent
    b = rng.normal(0, 0.1, (2, n)).astype(np.float32)
    b[:, sr:9 * sr // 2] = 0.0  # whole blocks of it
    with Bus.temporary(2, n, tmp_path) as mix, Bus.temporary(2, n, tmp_path) as part:
        mix.add(0, a)
        part.add(0, b)
        assert mix.peak is None
        mix.add_bus(part)
        whole = mix.read(0, n)
        assert mix.peak == float(np.abs(whole).max()) == float(np.abs(a + b).max())
        with ThreadPoolExecutor(2) as pool:
            known = measure_sum(mix, sr, pool)
            mix.peak = None
            read = measure_sum(mix, sr, pool)
        assert known.loudness.sample_peak == read.loudness.sample_peak
        assert known.true_peak_db == read.true_peak_db
        assert known.loudness.integrated_loudness() == read.loudness.integrated_loudness()
        mix.add_bus(part)
        mix.add(10, np.ones((2, 1), np.float32))
        assert mix.peak is None
        mix.add_bus(part)
        mix.write(0, np.zeros((2, 1), np.float32))
        assert mix.peak is None
