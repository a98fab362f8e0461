"""Review of the mixer speed-ups (issue 23 item 7): the disk bus, its sum cache, the stem
processes and the meter's silence skip against the in-memory, one-process renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import soundscape.dsp.bus as bus_module
from soundscape.audio_io import read_audio
from soundscape.pipelines.render import render
from tests.conftest import wav
from tests.test_iterate_cache import write_takes

LOOPED = """name: tails
duration: 2 s
sample_rate: {sr}
channels: {channels}
master: {{loudness: -10 LUFS, ceiling: -1 dBTP{loop}}}
elements:
  hit:
    file: hit.wav
    at: [1.8 s]
    effects: [{{reverb: {{room_size: 0.95, damping: 0.2, wet: 0.8, dry: 0.5}}}}]
  bed: {{file: bed.wav, loop: {{crossfade: 300 ms}}, volume: -12 dB}}
  drip: {{file: drip.wav, scatter: {{interval: [0.3 s, 0.7 s], pan_jitter: 0.5}}}}
"""


def _scene(root: Path, sr: int, channels: int, loop: bool = True) -> Path:
    rng = np.random.default_rng(4)
    hit = np.zeros(sr // 2, np.float32)
    hit[: sr // 10] = rng.normal(0, 0.3, sr // 10) * np.linspace(1, 0, sr // 10)
    wav(root / "hit.wav", hit, sr)
    wav(root / "bed.wav", rng.normal(0, 0.1, 22050 * 2), 22050)
    wav(root / "drip.wav", rng.normal(0, 0.3, 4000) * np.hanning(4000), 16000)
    path = root / "s.yaml"
    path.write_text(LOOPED.format(sr=sr, channels=channels,
                                  loop=", loopable: 500 ms" if loop else ""))
    return path


def _mix(res: object) -> np.ndarray:
    y, _ = read_audio(res.mix)  # type: ignore[attr-defined]
    return y


@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2)])
@pytest.mark.parametrize("loopable", [True, False])
def test_disk_bus_and_stem_processes_mix_as_one_process_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sr: int, channels: int,
        loopable: bool) -> None:
    # a loopable mix folds a disk bus whose tails run five loops past its end; a plain one
    # keeps the sample peak the stem processes' parts were added with (``Bus.peak``)
    scene = _scene(tmp_path, sr, channels, loop=loopable)
    [ref] = render(scene, out=tmp_path / "ref", jobs=1, bit_depth=32)
    monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    [one] = render(scene, out=tmp_path / "one", jobs=1, bit_depth=32)
    [two] = render(scene, out=tmp_path / "two", jobs=2, bit_depth=32)
    [again] = render(scene, out=tmp_path / "again", jobs=2, bit_depth=32)
    r = _mix(ref)
    assert np.array_equal(_mix(one), r)  # the same adds in the same order, on disk
    assert float(np.abs(_mix(two) - r).max()) <= 1e-6
    assert np.array_equal(_mix(two), _mix(again))  # the same bits every time (tags hold times)
    assert two.mix_lufs == pytest.approx(ref.mix_lufs, abs=1e-3)
    assert two.mix_true_peak_dbtp == pytest.approx(ref.mix_true_peak_dbtp, abs=1e-3)


EDITED = """name: it
duration: 4 s
sample_rate: {sr}
channels: {channels}
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 300 ms}}, volume: {bed}}}
  drip: {{file: drip.wav, scatter: {{interval: [0.5 s, 1.5 s], pan_jitter: 0.5}}, volume: {drip}}}
  tone: {{file: tone.wav, at: 1 s, volume: -6 dB, effects: [{{lowpass: {{cutoff: 2 kHz}}}}]}}
  hum: {{file: tone.wav, at: 0.2 s, volume: -9 dB}}
  hum2: {{file: tone.wav, at: 2.2 s, volume: -12 dB, pan: 0.3}}
  drip2: {{file: drip.wav, scatter: {{interval: [0.4 s, 0.9 s]}}, volume: -6 dB}}
master: {{loudness: -20 LUFS}}
"""


@pytest.mark.parametrize("disk", [False, True])
@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("edits", [("-12 dB", "0 dB"), ("-12 dB", "-3 dB")])
@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2)])
def test_edits_of_a_kept_sum_equal_a_fresh_render(  # one edit: ``Update``; two: ``subtract``
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sr: int, channels: int,
        edits: tuple[str, str], jobs: int, disk: bool) -> None:
    if disk:
        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    write_takes(tmp_path)
    scene = tmp_path / "it.yaml"
    scene.write_text(EDITED.format(sr=sr, channels=channels, bed="-6 dB", drip="0 dB"))
    out = tmp_path / "o"
    render(scene, out=out, jobs=jobs, bit_depth=32)
    for bed, drip in [edits, ("-6 dB", "0 dB"), edits]:  # edits in a row, on the kept sum
        scene.write_text(EDITED.format(sr=sr, channels=channels, bed=bed, drip=drip))
        [res] = render(scene, out=out, jobs=jobs, bit_depth=32)
        [fresh] = render(scene, out=tmp_path / f"fresh{bed}{drip}", jobs=1, bit_depth=32)
        assert float(np.abs(_mix(res) - _mix(fresh)).max()) <= 5e-7
        assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
        assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)


@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2)])
def test_only_on_a_disk_bus_with_stem_processes_mixes_as_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sr: int, channels: int) -> None:
    write_takes(tmp_path)
    scene = tmp_path / "it.yaml"
    results = []
    for disk, jobs in [(False, 1), (True, 2)]:
        if disk:
            monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
        scene.write_text(EDITED.format(sr=sr, channels=channels, bed="-6 dB", drip="0 dB"))
        out = tmp_path / f"o{jobs}"
        render(scene, out=out, jobs=jobs, bit_depth=32)
        scene.write_text(EDITED.format(sr=sr, channels=channels, bed="-12 dB", drip="-3 dB"))
        [res] = render(scene, out=out, jobs=jobs, bit_depth=32, only=["bed", "drip", "hum"])
        results.append(res)
    a, b = results
    assert float(np.abs(_mix(a) - _mix(b)).max()) <= 5e-7
    assert a.mix_lufs == pytest.approx(b.mix_lufs, abs=1e-3)


@pytest.mark.parametrize("disk", [False, True])
def test_a_version_2_interleaved_sum_is_not_misread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: bool) -> None:
    import json

    from soundscape.outputs import sumcache

    if disk:
        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    write_takes(tmp_path)
    scene = tmp_path / "it.yaml"
    scene.write_text(EDITED.format(sr=48000, channels=2, bed="-6 dB", drip="0 dB"))
    out = tmp_path / "o"
    [first] = render(scene, out=out, jobs=1, bit_depth=32)
    folder = Path(first.mix).parent / sumcache.CACHE_DIR
    index = json.loads((folder / sumcache.INDEX_FILE).read_text())
    data = np.fromfile(folder / sumcache.SUM_FILE, np.float32).reshape(2, -1)
    data.T.copy().tofile(folder / sumcache.SUM_FILE)  # as version 2 kept it: interleaved
    st = (folder / sumcache.SUM_FILE).stat()
    index.update(version=2, file={"bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    (folder / sumcache.INDEX_FILE).write_text(json.dumps(index))
    scene.write_text(EDITED.format(sr=48000, channels=2, bed="-12 dB", drip="0 dB"))
    [res] = render(scene, out=out, jobs=1, bit_depth=32)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=32)
    assert float(np.abs(_mix(res) - _mix(fresh)).max()) <= 5e-7


@pytest.mark.parametrize("disk", [False, True])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_add_bus_keeps_the_sum_and_its_sample_peak(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk: bool, channels: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from soundscape.dsp.bus import Bus
    from soundscape.master import measure_sum

    if disk:
        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    rng = np.random.default_rng(2)
    frames, sr = 3 * bus_module.BLOCK + 77, 48000
    want = np.zeros((channels, frames), np.float32)
    with Bus.temporary(channels, frames, tmp_path) as mix, \
            Bus.temporary(channels, frames, tmp_path) as part:
        assert mix.in_memory is not disk
        # adds out of order, some past what was written, one only on the part; the largest
        # sample of the sum negative, in a block the mix alone had silent
        for bus, start, n in [(mix, 5000, 900), (mix, 200, 100), (mix, 150000, 30000),
                              (part, 100, 400), (part, 70000, 5000), (part, 190000, 6000)]:
            block = (rng.standard_normal((channels, n)) * 0.2).astype(np.float32)
            bus.add(start, block)
            want[:, start:start + n] += block
        part.add(72000, np.full((channels, 1), -1.5, np.float32))
        want[:, 72000] += -1.5
        mix.add_bus(part)
        got = np.concatenate([b for _, b in mix.blocks()], axis=1)
        assert np.array_equal(got, want)
        assert mix.peak == float(np.abs(want).max())
        with ThreadPoolExecutor(2) as pool:
            kept = measure_sum(mix, sr, pool)
            mix.peak = None
            read = measure_sum(mix, sr, pool)
        assert kept.true_peak_db == read.true_peak_db
        assert kept.loudness.energies == read.loudness.energies


class _Unskipped:
    """A meter that filters every frame, silence included (what the skip must equal)."""

    @staticmethod
    def energies(self: object, block: np.ndarray) -> np.ndarray:
        from soundscape.dsp import meter

        y = meter._k_filter(self._kw, block, self.sample_rate)  # type: ignore[attr-defined]
        return np.einsum("cn,cn->n", y, y)


def _endings(sr: int, channels: int) -> dict[str, np.ndarray]:
    """Sound, then what a stem ends or pauses on: silence, -0.0, a denormal, a tiny offset,
    a lone click."""
    rng = np.random.default_rng(6)
    n = 3 * sr
    t = np.arange(n) / sr
    sound = np.zeros((channels, n), np.float32)
    sound[:, : sr // 2] = 0.5 * np.sin(2 * np.pi * 997 * t[: sr // 2])
    out = {"silence": sound}
    x = sound.copy()
    x[:, sr // 2:] = -0.0
    out["negative zero"] = x
    x = sound.copy()
    x[:, sr // 2 + 9000] = 1e-40
    out["denormal"] = x
    x = sound.copy()
    x[:, sr // 2:] = 1e-7
    out["offset"] = x
    x = sound.copy()
    x[:, 2 * sr + 17] = rng.uniform(-1, 1, channels)
    out["click"] = x
    return out


@pytest.mark.parametrize("sr", [22050, 48000, 192000])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_meter_skips_silence_with_the_energies_of_filtering_it(
        monkeypatch: pytest.MonkeyPatch, sr: int, channels: int) -> None:
    import pickle

    from soundscape.dsp import meter

    def run(blocks: list[int], send: bool) -> list[list[float]]:
        got = []
        for x in _endings(sr, channels).values():
            m = meter.Meter(sr, channels, true_peak=False)
            at = k = 0
            while at < x.shape[1]:
                b = blocks[k % len(blocks)]
                m.add(x[:, at:at + b])
                at, k = at + b, k + 1
                if send and m._at_rest:  # sent to another process where at rest
                    m = pickle.loads(pickle.dumps(m))
            got.append(m.finish().energies)
        return got

    # (the batches' bounds move the float64 sums' rounding: each pattern against itself)
    patterns = [[1 << 20], [8191, 8193, 1], [3 * meter.BATCH // 2, 7]]
    skipped = [(run(p, False), run(p, True)) for p in patterns]
    monkeypatch.setattr(meter.Meter, "_k_energies", _Unskipped.energies)
    for p, (kept, sent) in zip(patterns, skipped, strict=True):
        filtered = run(p, False)
        assert kept == filtered
        assert sent == filtered


def _block_dc_by_sosfilt(audio: np.ndarray, sr: int) -> np.ndarray:
    """The DC blocker as it was before its recursions were written out: butter's section run
    by scipy.signal.sosfilt, warm-up and rest rule as in ``dcblock``'s docstring."""
    from scipy.signal import butter, sosfilt, sosfilt_zi

    from soundscape.dsp.dcblock import DC_CUTOFF_HZ, WARM_UP_CUTOFF_PERIODS

    n = audio.shape[1]
    period = round(sr / DC_CUTOFF_HZ)
    if n < period:
        return audio.astype(np.float32)
    sos = np.asarray(butter(2, DC_CUTOFF_HZ, "highpass", fs=sr, output="sos"))
    first = audio[:, 0].astype(np.float64)
    opening = audio[:, :period].mean(axis=1, dtype=np.float64)
    zi = sosfilt_zi(sos)[:, None, :] * opening[None, :, None]
    warm = min(n - 1, round(WARM_UP_CUTOFF_PERIODS * sr / DC_CUTOFF_HZ))
    if warm > 0:
        before = 2 * opening[:, None] - audio[:, warm:0:-1].astype(np.float64)
        _, zi = sosfilt(sos, before, axis=-1, zi=zi)
    zi[:, np.abs(first - opening) >= np.abs(first), :] = 0.0
    y, _ = sosfilt(sos, audio.astype(np.float64), axis=-1, zi=zi)
    return y.astype(np.float32)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 96000, 192000])
@pytest.mark.parametrize("channels", [1, 2, 4])
def test_block_dc_is_the_sosfilt_dc_blocker_to_an_ulp(sr: int, channels: int) -> None:
    from soundscape.dsp.dcblock import block_dc

    rng = np.random.default_rng(sr + channels)
    period = round(sr / 15)
    for n in (period - 1, period, period + 1, 3 * period + 7, 2 * sr):
        t = np.arange(n) / sr
        takes = [rng.standard_normal((channels, n)) * 0.1 + 0.5,  # starts on its offset
                 np.sin(2 * np.pi * 440 * t)[None].repeat(channels, 0) * 0.5,  # from 0
                 np.concatenate([np.zeros((channels, n // 2)),
                                 rng.standard_normal((channels, n - n // 2))], axis=1),
                 rng.standard_normal((channels, n)) * 1e3 + 3e5,  # a huge offset
                 np.sin(2 * np.pi * 5 * t)[None].repeat(channels, 0) * 0.8]  # sub-sonic
        for x in takes:
            x = x.astype(np.float32)
            want, got = _block_dc_by_sosfilt(x, sr), block_dc(x, sr)
            assert got.dtype == np.float32 and got.shape == x.shape
            scale = np.float32(max(float(np.abs(want).max()), float(np.abs(x).max())))
            assert float(np.abs(got.astype(np.float64) - want).max()) <= np.spacing(scale)


@pytest.mark.parametrize("sr", [11025, 22050, 44100, 96000])
@pytest.mark.parametrize("kind", ["tonal", "noisy"])
def test_loop_points_are_those_scipys_resampling_and_correlation_choose(
        monkeypatch: pytest.MonkeyPatch, sr: int, kind: str) -> None:
    from scipy import fft
    from scipy.signal import fftconvolve, resample_poly

    from soundscape.mixer import loops

    rng = np.random.default_rng(sr)
    n = int(sr * 4.3)
    t = np.arange(n) / sr
    take = np.stack([np.sin(2 * np.pi * 220.3 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t)),
                     np.sin(2 * np.pi * 329.6 * t + 1.0)]) * 0.3 if kind == "tonal" else \
        rng.standard_normal((2, n)) * 0.1 * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    take = take.astype(np.float32)
    xf = loops.max_crossfade(n) // 2
    ours = loops.best_loop_points(take, xf, sr)

    def segment_corr(head: np.ndarray, tail: np.ndarray, ends: np.ndarray,
                     xf: int) -> np.ndarray:
        region = tail[:, ends[0] - xf:ends[-1]]
        num = sum(fftconvolve(r, h[::-1], mode="valid") for r, h in zip(region, head,
                                                                          strict=True))
        c = np.concatenate([[0.0], np.cumsum((region ** 2).sum(axis=0))])
        energy = c[xf:] - c[:-xf]
        return num / (np.sqrt(np.maximum(energy, 0.0) * float((head * head).sum())) + 1e-12)

    monkeypatch.setattr(loops, "_resample_poly",
                        lambda x, up, down: resample_poly(x, up, down, axis=1))
    monkeypatch.setattr(loops, "_fast_len", lambda k: fft.next_fast_len(k, real=True))
    monkeypatch.setattr(loops, "_segment_corr", segment_corr)
    theirs = loops.best_loop_points(take, xf, sr)
    assert (ours.start, ours.end) == (theirs.start, theirs.end)
    assert ours.correlation == pytest.approx(theirs.correlation, abs=1e-9)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("sr,channels", [(22050, 1), (48000, 2)])
def test_elements_added_to_a_kept_sum_on_disk_are_summed_onto_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sr: int, channels: int,
        jobs: int) -> None:
    # nothing to subtract: the kept sum file is the bus as it is, and the new stems are added
    # into it (read, not taken for zeros)
    monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    write_takes(tmp_path)
    scene = tmp_path / "it.yaml"
    full = EDITED.format(sr=sr, channels=channels, bed="-6 dB", drip="0 dB")
    lines = full.splitlines(keepends=True)
    scene.write_text("".join(line for line in lines if "hum2" not in line
                             and "drip2" not in line))
    out = tmp_path / "o"
    render(scene, out=out, jobs=jobs, bit_depth=32)
    scene.write_text(full)
    [res] = render(scene, out=out, jobs=jobs, bit_depth=32)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=32)
    assert float(np.abs(_mix(res) - _mix(fresh)).max()) <= 5e-7
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
