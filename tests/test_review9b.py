"""Review of the page-cache handoff of written WAV files (``_Shifted.write``): the files are
byte for byte those written without it, read the same by independent readers, interrupted
writes leave nothing, and a disk that makes the handoff slow ends it."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from soundscape import audio_io
from soundscape.audio_io import AtomicAudioWriter, _Shifted


def _write(path: Path, audio: np.ndarray, sr: int, bits: int, block: int) -> str:
    with AtomicAudioWriter(path, sr, audio.shape[0], bits, background=True) as w:
        for start in range(0, audio.shape[1], block):
            w.write(audio[:, start:start + block])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frames_for(size: int, channels: int, bits: int) -> int:
    return (size - audio_io.WAV_RESERVE) // (channels * bits // 8)


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The byte ranges ``posix_fadvise`` is asked to drop, in order (the calls still run)."""
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, offset + length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


@pytest.mark.parametrize("bits,channels,sr,size", [
    (16, 1, 22050, (8 << 20) - 4096),
    (16, 2, 44100, (8 << 20) + 4096),
    (24, 2, 48000, (16 << 20) + 1),
    (24, 1, 96000, (8 << 20) - (1 << 20) + 3),
    (32, 2, 96000, (24 << 20) + 12345),
    (32, 1, 48000, 9 << 20),
])
def test_handoff_files_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          advised: list[tuple[int, int]], bits: int,
                                          channels: int, sr: int, size: int) -> None:
    import scipy.io.wavfile
    import soundfile as sf

    frames = _frames_for(size, channels, bits)
    rng = np.random.default_rng(bits * channels + sr)
    audio = rng.uniform(-1.0, 1.0, (channels, frames)).astype(np.float32)
    block = int(rng.integers(1000, 70000))
    calls = advised
    on = _write(tmp_path / "on.wav", audio, sr, bits, block)
    assert bool(calls) == (size > _Shifted.HANDOFF_STEP)
    # a tight handoff: every 64 KiB, all but the last 4 KiB
    monkeypatch.setattr(_Shifted, "HANDOFF_STEP", 1 << 16)
    monkeypatch.setattr(_Shifted, "HANDOFF_WINDOW", 1 << 19)
    monkeypatch.setattr(_Shifted, "HANDOFF_LAG", 1 << 12)
    n = len(calls)
    tight = _write(tmp_path / "tight.wav", audio, sr, bits, block)
    assert len(calls) >= n + 6  # one a megabyte (the buffer)
    monkeypatch.setattr(_Shifted, "HANDOFF_STEP", 1 << 62)
    n = len(calls)
    off = _write(tmp_path / "off.wav", audio, sr, bits, block)
    assert len(calls) == n
    assert on == off == tight
    got, got_sr = sf.read(tmp_path / "on.wav", dtype="float32", always_2d=True)
    assert got_sr == sr and got.shape == (frames, channels)
    info = sf.info(tmp_path / "on.wav")
    assert info.subtype == {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}[bits]
    q = 2.0 ** -(bits - 1) if bits < 32 else 0.0
    np.testing.assert_allclose(got.T, audio, atol=q * 1.01)
    if bits != 24:  # scipy reads 24-bit as int32 too; the check above covers it
        ssr, data = scipy.io.wavfile.read(tmp_path / "on.wav", mmap=True)
        assert ssr == sr and data.shape[0] == frames
    raw = (tmp_path / "on.wav").read_bytes()
    assert raw[:4] == b"RIFF" and int.from_bytes(raw[4:8], "little") == len(raw) - 8


def test_a_file_moved_down_after_its_handoff_is_intact(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The small-scale equivalent of an RF64 file past 4 GiB: what the encoder wrote does not
    start ``RIFF``, so ``finish`` moves it down to offset 0 (``_move_down``, in steps smaller
    than the file) after its pages were handed off."""
    monkeypatch.setattr(_Shifted, "HANDOFF_STEP", 1 << 16)
    monkeypatch.setattr(_Shifted, "HANDOFF_WINDOW", 1 << 19)
    monkeypatch.setattr(_Shifted, "HANDOFF_LAG", 1 << 12)
    real_move = audio_io._move_down
    monkeypatch.setattr(audio_io, "_move_down",
                        lambda fd, offset, end: real_move(fd, offset, end, step=(1 << 20) + 7))
    data = np.random.default_rng(3).integers(0, 256, (20 << 20) + 333, np.uint8).tobytes()
    data = b"RF64" + data[4:]
    path = tmp_path / "big.wav"
    path.write_bytes(b"")
    f = _Shifted(path, audio_io.WAV_RESERVE)
    for i in range(0, len(data), 70001):
        f.write(data[i:i + 70001])
    f.seek(0)  # the encoder's header, rewritten at close
    f.write(b"RF64" + b"\x01\x02\x03\x04")
    f.seek(0, 2)
    f.finish()
    expect = b"RF64\x01\x02\x03\x04" + data[8:]
    got = path.read_bytes()
    assert len(got) == len(expect) and got == expect


class _Stop(Exception):
    pass


@pytest.mark.parametrize("exc", [_Stop, KeyboardInterrupt])
@pytest.mark.parametrize("background", [False, True])
def test_an_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             exc: type[BaseException], background: bool) -> None:
    """An exception in the middle of a file (after handoffs, and raised from within one)
    leaves neither the target nor its temporary file, and the exception is the one raised."""
    real = os.posix_fadvise
    n = 0

    def failing(*a: int) -> None:
        nonlocal n
        n += 1
        if n == 3:
            raise exc()
        real(*a)

    monkeypatch.setattr(os, "posix_fadvise", failing)
    audio = np.random.default_rng(4).normal(0, 0.1, (2, 48000 * 200)).astype(np.float32)
    target = tmp_path / "cut.wav"
    target.write_bytes(b"old")
    with pytest.raises(exc), AtomicAudioWriter(target, 48000, 2, 24,
                                                background=background) as w:
        for start in range(0, audio.shape[1], 48000):
            w.write(audio[:, start:start + 48000])
    assert n >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.wav"]
    assert target.read_bytes() == b"old"



def test_an_always_slowish_disk_ends_the_handoff(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A handoff that takes a little under ``HANDOFF_SLOW`` every time never trips the
    per-call cutoff, yet costs the writer more than it can save (~10 us a page: ~20 ms per
    8 MiB step on this machine, nothing on one whose free pages are cheap). The time spent in
    handoffs over a file is bounded: a few slow steps, not one per step."""
    calls: list[int] = []

    def slowish(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(_Shifted.HANDOFF_SLOW * 0.8)

    monkeypatch.setattr(os, "posix_fadvise", slowish)
    audio = np.zeros((2, 48000 * 600), np.float32)  # 10 minutes, 165 MiB at 24 bits
    t0 = time.perf_counter()
    with AtomicAudioWriter(tmp_path / "a.wav", 48000, 2, 24) as w:
        for start in range(0, audio.shape[1], 1 << 18):
            w.write(audio[:, start:start + (1 << 18)])
    took = time.perf_counter() - t0
    steps = (tmp_path / "a.wav").stat().st_size // _Shifted.HANDOFF_STEP
    assert steps >= 19
    assert len(calls) <= 5, f"{len(calls)} handoffs of {steps} due, {took:.2f} s"


def test_handoffs_as_fast_as_here_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handoffs of a few milliseconds each (1-4 ms measured here) are not ended by the budget."""
    calls: list[int] = []

    def fast(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(0.004)

    monkeypatch.setattr(os, "posix_fadvise", fast)
    audio = np.zeros((2, 48000 * 600), np.float32)
    with AtomicAudioWriter(tmp_path / "a.wav", 48000, 2, 24) as w:
        for start in range(0, audio.shape[1], 1 << 18):
            w.write(audio[:, start:start + (1 << 18)])
    # (a handoff comes at the first write past a step: 18 for this file's 20 steps)
    assert len(calls) >= (tmp_path / "a.wav").stat().st_size // _Shifted.HANDOFF_STEP - 2


@pytest.mark.parametrize("bits", [16, 24, 32])
def test_tagging_a_handed_off_file_gives_the_same_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       advised: list[tuple[int, int]],
                                                       bits: int) -> None:
    """Tags are written in place (into the room before the audio, and after it) in a file
    whose pages were handed off: the tagged file is that of a file written without the
    handoff, and independent readers read its audio and tags."""
    import soundfile as sf

    from soundscape.outputs.tags import Tags, tag_file
    from soundscape.riff import wav_chunks

    audio = np.random.default_rng(bits).uniform(-1, 1, (2, 48000 * 60)).astype(np.float32)
    tags = Tags(title="t", description="d", scene="s", key="k" * 40,
                created="2026-12-05T02:00:00", loudness_lufs=-20.0, true_peak_dbtp=-1.0)
    digests = []
    calls = advised
    for step in (_Shifted.HANDOFF_STEP, 1 << 62):
        monkeypatch.setattr(_Shifted, "HANDOFF_STEP", step)
        path = tmp_path / f"{step}.wav"
        _write(path, audio, 48000, bits, 48000)
        size = path.stat().st_size
        assert tag_file(path, tags, loop_frames=48000 * 60)
        assert path.stat().st_size > size
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        ids = [c.id for c in wav_chunks(path) or []]
        assert b"bext" in ids and b"LIST" in ids and b"data" in ids and b"smpl" in ids
        got, sr = sf.read(path, dtype="float32", always_2d=True)
        assert sr == 48000 and got.shape == (48000 * 60, 2)
    assert len(calls) >= 1  # the handoff ran, for the first file only
    assert digests[0] == digests[1]


def test_a_slow_disk_ends_the_handoff_for_the_next_files_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A render writes tens of files (stems, loop files, takes, the mix) to one disk: once a
    handoff there was slow, the next files are not handed off either, or each pays its own
    slow first handoff (on a USB stick, the time to queue 7 MiB of writeback, per file)."""
    calls: list[int] = []

    def slow(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(_Shifted.HANDOFF_SLOW * 1.5)

    monkeypatch.setattr(os, "posix_fadvise", slow)
    audio = np.zeros((2, 48000 * 120), np.float32)  # 33 MiB at 24 bits
    for i in range(6):
        with AtomicAudioWriter(tmp_path / f"{i}.wav", 48000, 2, 24) as w:
            for start in range(0, audio.shape[1], 65536):
                w.write(audio[:, start:start + 65536])
    assert len(calls) == 1


def test_a_disk_found_slow_is_tried_again_later(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow handoff (a moment of load) does not end handoffs on that disk for the rest of a
    long-lived process (the servers): after ``HANDOFF_REST`` seconds they are tried again."""
    delay = [_Shifted.HANDOFF_SLOW * 1.5]
    calls: list[int] = []

    def sometimes_slow(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(delay[0])

    monkeypatch.setattr(os, "posix_fadvise", sometimes_slow)
    audio = np.zeros((2, 48000 * 60), np.float32)
    def one(name: str) -> None:
        with AtomicAudioWriter(tmp_path / name, 48000, 2, 24) as w:
            for start in range(0, audio.shape[1], 65536):
                w.write(audio[:, start:start + 65536])

    one("a.wav")
    assert len(calls) == 1
    delay[0] = 0.0
    one("b.wav")
    assert len(calls) == 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + _Shifted.HANDOFF_REST + 1)
    one("c.wav")
    assert len(calls) >= 2


def test_the_head_of_a_file_is_not_handed_off(tmp_path: Path,
                                              advised: list[tuple[int, int]]) -> None:
    """The encoder rewrites its header at close, ``finish`` the RIFF header, tagging the
    chunks before the audio: a page of the head dropped by the handoff is read back from the
    disk, synchronously, twice a file (4 KiB read while writing a 115 MB WAV and 4 KiB while
    tagging it, /proc/self/io; none without the handoff). No handoff covers the head."""
    calls = advised
    audio = np.zeros((2, 48000 * 300), np.float32)  # 82 MiB at 24 bits: past the window
    with AtomicAudioWriter(tmp_path / "a.wav", 48000, 2, 24, background=True) as w:
        for start in range(0, audio.shape[1], 65536):
            w.write(audio[:, start:start + 65536])
    assert len(calls) >= 9
    assert min(a for a, _ in calls) >= audio_io.WAV_RESERVE + 4096


def test_files_written_side_by_side_stop_on_the_first_slow_handoff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stems are written several at a time (the mixer's workers): once one handoff on the
    disk was slow, the files already open stop theirs too."""
    calls: list[int] = []

    def slow(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(_Shifted.HANDOFF_SLOW * 1.5)

    monkeypatch.setattr(os, "posix_fadvise", slow)
    audio = np.zeros((2, 48000 * 120), np.float32)
    writers = [AtomicAudioWriter(tmp_path / f"{i}.wav", 48000, 2, 24) for i in range(4)]
    for w in writers:
        w.__enter__()
    for start in range(0, audio.shape[1], 65536):
        for w in writers:
            w.write(audio[:, start:start + 65536])
    for w in writers:
        w.__exit__(None, None, None)
    assert len(calls) == 1
