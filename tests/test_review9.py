"""Review of the edit path's page-cache dropping (``audio_io.forget_cached``,
``sumcache._Replaced``) and of the meter's pedalboard K-weighting, on inputs their own tests
did not try."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from soundscape.outputs import sumcache
from soundscape.pipelines.render import render
from tests.test_iterate_cache import SCENE, write_scene


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise")
def test_an_edit_never_drops_the_pages_of_the_stem_it_just_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tone plays from 1 s to 2 s of a 4 s scene: its new stem is silence after that, so the
    edit reads the rest of the earlier file only once the new one has been renamed onto its
    name. The pages dropped must still be the earlier file's (the one being read), never those
    of the file the render has just written and reads again (tags, overview, next edit)."""
    monkeypatch.setattr(sumcache._Replaced, "STEP", 4096)  # a 4 s stem drops as a long one
    monkeypatch.setattr(sumcache._Replaced, "MARGIN", 0)
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    stem = out / "it" / "stems" / "tone.wav"
    old_inode = stem.stat().st_ino
    dropped: list[int] = []  # the inode of every file whose pages were dropped
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        dropped.append(os.fstat(fd).st_ino)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    # an effect changed (a volume alone would not read the earlier file: render_element's
    # ``replaces`` takes the earlier stem out of the sum as it makes the new one)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-6 dB")
                     .replace("{lowpass: {cutoff: 2 kHz}}", "{lowpass: {cutoff: 3 kHz}}"))
    render(scene, out=out, jobs=1)
    new_inode = stem.stat().st_ino
    assert new_inode != old_inode  # replaced by a rename
    assert dropped.count(old_inode) >= 2  # dropped behind the reading
    assert new_inode not in dropped


def _disk_read_bytes() -> int:
    """Bytes this process has had read from storage (page-cache hits are not counted)."""
    line = next(v for v in Path("/proc/self/io").read_text().splitlines()
                if v.startswith("read_bytes"))
    return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists() or not hasattr(os, "posix_fadvise"),
                    reason="disk reads are counted in /proc/self/io")
def test_a_replaced_flac_stem_is_read_from_the_cache_not_the_disk(tmp_path: Path) -> None:
    """A FLAC stem's bytes do not go as its frames (a silent first half takes next to nothing):
    dropping its pages where the frames read say the reading is drops pages not read yet,
    which the decoder then reads again from the disk. A cached stem an edit subtracts is read
    from the cache only, and left out of it once read."""
    import tempfile

    import numpy as np
    import soundfile as sf

    from soundscape.dsp.bus import BLOCK
    from soundscape.outputs.incremental import Output
    from tests.test_iterate_cache import _on_tmpfs, _resident

    with tempfile.TemporaryDirectory(dir=Path.cwd() if _on_tmpfs(tmp_path) else tmp_path) as d:
        sr, frames = 48000, 48000 * 240
        x = np.zeros((frames, 2), np.float32)
        x[frames // 2:] = np.random.default_rng(0).normal(0, 0.2, (frames - frames // 2, 2))
        path = Path(d) / "old.flac"
        sf.write(path, x, sr, subtype="PCM_24")  # 33 MB, all of it in its second half
        path.read_bytes()
        assert _resident(path) > 0.99
        before = _disk_read_bytes()
        out = Output(sr, 2, frames, "flac", 24)
        with sumcache.open_stem(path, out, replaced=True) as f:
            got = np.concatenate([sumcache._read_exact(f, min(BLOCK, frames - s), s, frames)
                                  for s in range(0, frames, BLOCK)], axis=1)
        assert _disk_read_bytes() - before < 1 << 20  # was 16 MB: the second half, twice
        assert _resident(path) < 0.05
        with sumcache.open_stem(path, out) as f:
            np.testing.assert_array_equal(got, sumcache._read_exact(f, frames, 0, frames))


def test_a_written_wav_is_handed_to_the_disk_behind_the_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stems and mixes leave the page cache as they are written (``_Shifted``'s handoff): each
    stretch of the file but the last megabyte is advised away at least once, never the part
    the encoder may still rewrite, and the file reads back as written."""

    from soundscape.audio_io import WAV_RESERVE, AtomicAudioWriter, _Shifted, read_audio

    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((offset, offset + length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    sr = 48000
    audio = np.random.default_rng(9).normal(0, 0.1, (2, sr * 120)).astype(np.float32)
    path = tmp_path / "long.wav"
    with AtomicAudioWriter(path, sr, 2, 24, background=True) as w:
        for start in range(0, audio.shape[1], 65536):
            w.write(audio[:, start:start + 65536])
    size = path.stat().st_size
    assert len(calls) >= size // _Shifted.HANDOFF_STEP - 1
    covered = np.zeros(size, bool)
    for a, b in calls:
        covered[a:b] = True
    assert calls[-1][1] <= size - _Shifted.HANDOFF_LAG
    # all but the head and the stretch written after the last handoff
    head = WAV_RESERVE + _Shifted.HANDOFF_HEAD
    assert not covered[:head].any()
    assert covered[head:size - _Shifted.HANDOFF_STEP - _Shifted.HANDOFF_LAG].all()
    got, got_sr = read_audio(path)
    assert got_sr == sr and got.shape == audio.shape
    np.testing.assert_allclose(got, audio, atol=2.0 ** -22)


def test_a_slow_disk_ends_the_handoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where starting the writeback blocks (a slow disk's queue full), the file is left to the
    kernel after the first slow handoff: the render does not wait on the disk."""
    import time

    from soundscape.audio_io import AtomicAudioWriter, _Shifted

    calls: list[int] = []

    def slow(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(offset)
        time.sleep(_Shifted.HANDOFF_SLOW * 1.5)

    monkeypatch.setattr(os, "posix_fadvise", slow)
    audio = np.random.default_rng(2).normal(0, 0.1, (2, 48000 * 120)).astype(np.float32)
    with AtomicAudioWriter(tmp_path / "a.wav", 48000, 2, 24) as w:
        for start in range(0, audio.shape[1], 65536):
            w.write(audio[:, start:start + 65536])
    assert (tmp_path / "a.wav").stat().st_size > 3 * _Shifted.HANDOFF_STEP  # 4 handoffs due
    assert len(calls) == 1
