"""Tags written in place: a WAV file soundscape writes keeps room before its audio, so its
``bext`` goes in front of the audio without copying the file, and reads back (wavinfo,
libsndfile) exactly as a file tagged by rewriting it does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from wavinfo import WavInfoReader

from soundscape.audio_io import WAV_RESERVE, read_audio, write_audio
from soundscape.outputs.tags import Tags, tag_file
from soundscape.riff import wav_chunks

TAGS = Tags("title", "an odd-length description", "scene", "night", "rain",
            "rain on a tin roof — café", 42, "model", "k" * 64, "2026-01-02T03:04:05", -20.5,
            -1.25)


def _chunks(path: Path) -> dict[bytes, bytes]:
    """Every chunk but the padding (``JUNK``), by id, as bytes."""
    out = {}
    with path.open("rb") as f:
        for c in wav_chunks(path) or []:
            if c.id != b"JUNK":
                f.seek(c.offset)
                out[c.id] = f.read(c.size)
    return out


@pytest.mark.parametrize("bits", [16, 24, 32])
@pytest.mark.parametrize("sr,channels", [(22050, 1), (44100, 2), (48000, 2), (96000, 1)])
def test_tags_in_place_read_back_as_tags_written_by_copying(tmp_path: Path, bits: int, sr: int,
                                                             channels: int) -> None:
    audio = np.random.default_rng(bits).uniform(-0.9, 0.9, (channels, 1001)).astype(np.float32)
    ours = write_audio(tmp_path / "ours.wav", audio, sr, bits)
    # the same samples written by the encoder to a path: no room before the audio, so the
    # file is rewritten
    from pedalboard.io import AudioFile

    other = tmp_path / "other.wav"
    with AudioFile(str(other), "w", sr, channels, bit_depth=bits) as f:
        f.write(audio)
    data_at = next(c.offset for c in wav_chunks(ours) or [] if c.id == b"data")
    inode = ours.stat().st_ino
    for path in (ours, other):
        assert tag_file(path, TAGS, loop_frames=1001)
        assert tag_file(path, TAGS, loop_frames=1001)  # again: replaced, not added
    # in place: the same file, its audio where it was
    assert ours.stat().st_ino == inode
    chunks = wav_chunks(ours) or []
    assert next(c.offset for c in chunks if c.id == b"data") == data_at
    ids = [c.id for c in chunks]
    assert ids[0] == b"fmt " and ids.index(b"bext") < ids.index(b"data")
    assert sum(8 + c.size + (c.size & 1) for c in chunks) + 12 == ours.stat().st_size
    assert ours.stat().st_size < data_at + audio.size * bits // 8 + 2048  # no hole, no growth
    assert other.stat().st_ino != inode
    # the same chunks, to the byte, as the file tagged by copying
    assert _chunks(ours) == _chunks(other)
    a, b = WavInfoReader(ours), WavInfoReader(other)
    assert a.bext.to_dict() == b.bext.to_dict() and a.info.to_dict() == b.info.to_dict()
    assert a.ixml.raw_xml.find("NOTE").text == TAGS.description
    assert a.bext.loudness_value == -20.5 and a.smpl.sample_loops[0].end == 1000
    got, rate = sf.read(str(ours), dtype="float32", always_2d=True)
    assert rate == sr and got.shape == (1001, channels)
    np.testing.assert_array_equal(got, sf.read(str(other), dtype="float32", always_2d=True)[0])
    np.testing.assert_array_equal(read_audio(ours)[0], read_audio(other)[0])


def test_an_untagged_file_reads_as_the_encoder_wrote_it(tmp_path: Path) -> None:
    """The room reserved before the audio is a JUNK chunk: libsndfile and pedalboard read the
    samples the encoder wrote, to the bit."""
    from pedalboard.io import AudioFile

    audio = np.random.default_rng(3).uniform(-1.2, 1.2, (2, 48000)).astype(np.float32)
    ours = write_audio(tmp_path / "a.wav", audio, 48000, 24)
    with AudioFile(str(tmp_path / "b.wav"), "w", 48000, 2, bit_depth=24) as f:
        f.write(audio)
    plain = (tmp_path / "b.wav").read_bytes()
    mine = ours.read_bytes()
    assert mine[WAV_RESERVE + 12:] == plain[12:]  # the encoder's bytes, after the room
    assert [c.id for c in wav_chunks(ours) or []][:1] == [b"JUNK"]
    np.testing.assert_array_equal(sf.read(str(ours), dtype="float32", always_2d=True)[0],
                                  sf.read(str(tmp_path / "b.wav"), dtype="float32",
                                          always_2d=True)[0])
    assert os.path.getsize(ours) == len(plain) + WAV_RESERVE


def test_a_file_the_room_cannot_front_is_moved_to_the_start(tmp_path: Path) -> None:
    """An encoder's file that must begin the file (RF64, whose ds64 comes first) is moved down
    over the room: the file is then exactly what the encoder wrote."""
    from soundscape.audio_io import _Shifted

    path = tmp_path / "x.wav"
    path.touch()
    body = b"RF64" + b"\xff" * 4 + b"WAVE" + bytes(range(256)) * 300
    shifted = _Shifted(path, WAV_RESERVE)
    assert shifted.write(body[:1000]) == 1000
    shifted.seek(1000)
    shifted.write(body[1000:])
    shifted.finish()
    assert path.read_bytes() == body
