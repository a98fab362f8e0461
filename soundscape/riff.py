"""Files stage: metadata chunks written into a finished WAV file (RIFF).

Input: the path of a WAV file written by ``audio_io`` and the chunks to put in it (``bext``,
``smpl``, ``LIST``/``INFO``). Output: the same file with those chunks. A file with room before
its audio (every WAV ``audio_io`` writes) is tagged in place, its audio never touched (two small
writes: what follows the audio, then the header); any other is rewritten through a temporary
file beside it and renamed into place.

Why by hand: pedalboard writes no metadata chunks, and no maintained PyPI library writes ``smpl``
and ``bext``. The format is small: a RIFF file is ``"RIFF" <size:u32> "WAVE"`` followed by
chunks ``<id:4s> <size:u32> <data>``, each padded to an even length (the pad byte is not counted
in its size), and the RIFF size counts everything after itself. Chunks are little-endian.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .audio_io import atomic_path

RIFF_LIMIT = 0xFFFFFFFF  # a RIFF size field is 32 bits; larger files are RF64, left untouched


@dataclass(frozen=True)
class Chunk:
    """One RIFF chunk as found in a file: its id, where its data starts, and its length."""

    id: bytes
    offset: int
    size: int


def wav_chunks(path: str | Path) -> list[Chunk] | None:
    """The top-level chunks of a RIFF/WAVE file, or None when it is not one (RF64 included)."""
    path = Path(path)
    end = path.stat().st_size
    chunks = []
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= end:
            f.seek(pos)
            cid, size = struct.unpack("<4sI", f.read(8))
            chunks.append(Chunk(cid, pos + 8, size))
            pos += 8 + size + (size & 1)
    return chunks


def chunk(cid: bytes, data: bytes) -> bytes:
    """A chunk's bytes: id, size, data and the pad byte that keeps the next chunk even."""
    assert len(cid) == 4
    return struct.pack("<4sI", cid, len(data)) + data + (b"\0" if len(data) & 1 else b"")


def plain(value: str, charset: str = "ascii") -> bytes:
    """``value`` in a legacy character set (``ascii`` for ``bext``, which EBU Tech 3285 keeps to
    ASCII; ``latin-1`` for ``LIST/INFO``, as TagLib, wavinfo and Windows read it): a character
    the set lacks is written without its accents where it has them (``é`` -> ``e``, ``ß`` ->
    ``ss``), else as ``?``. The full text goes into ``iXML``, which is UTF-8."""
    out = []
    for ch in value:
        try:
            out.append(ch.encode(charset))
            continue
        except UnicodeEncodeError:
            pass
        base = unicodedata.normalize("NFKD", ch).encode(charset, "ignore")
        out.append(base or (b"ss" if ch == "\u00df" else b"?"))
    return b"".join(out)


def _text(value: str, size: int) -> bytes:
    """A fixed-size ASCII field of ``bext``: cut to ``size`` bytes, NUL-padded."""
    raw = plain(value)[:size]
    return raw + b"\0" * (size - len(raw))


def _centi(value: float | None) -> int:
    """A ``bext`` v2 loudness field: hundredths as int16; 0x7FFF when unknown (EBU 3285)."""
    if value is None or not math.isfinite(value):  # silence measures -inf
        return 0x7FFF
    return max(-0x8000, min(0x7FFE, round(value * 100)))


def bext(description: str, originator: str, reference: str, date: str, time: str,
         time_reference: int = 0, loudness_lufs: float | None = None,
         true_peak_dbtp: float | None = None, coding_history: str = "") -> bytes:
    """The data of a Broadcast Wave ``bext`` chunk, version 2 (EBU Tech 3285).

    ``date`` is ``yyyy-mm-dd``, ``time`` ``hh:mm:ss``; ``time_reference`` counts frames since
    midnight of the first frame (0 here: a render starts at its own zero). The loudness fields
    not measured (range, momentary, short-term) read 0x7FFF, "unknown", as the standard says.
    """
    fixed = (_text(description, 256) + _text(originator, 32) + _text(reference, 32)
             + _text(date, 10) + _text(time, 8)
             + struct.pack("<IIH", time_reference & 0xFFFFFFFF, time_reference >> 32, 2)
             + b"\0" * 64  # UMID: none
             + struct.pack("<5h", _centi(loudness_lufs), 0x7FFF, _centi(true_peak_dbtp),
                           0x7FFF, 0x7FFF)
             + b"\0" * 180)
    assert len(fixed) == 602
    return fixed + plain(coding_history)


def smpl(frames: int, sample_rate: int) -> bytes:
    """The data of a ``smpl`` chunk holding one forward loop over the whole file: start 0, end
    ``frames - 1`` (the end is the loop's last frame, inclusive), repeating forever. Engines
    (Godot's "Detect From WAV", Unreal, Wwise, samplers) read its first loop."""
    period_ns = round(1e9 / sample_rate)
    header = struct.pack("<9I", 0, 0, period_ns, 60, 0, 0, 0, 1, 0)  # unity note: middle C
    loop = struct.pack("<6I", 0, 0, 0, max(frames - 1, 0), 0, 0)  # id, forward, start, end
    return header + loop


def info_list(fields: dict[str, str]) -> bytes:
    """The data of a ``LIST`` chunk of type ``INFO``: one NUL-terminated text per field id
    (``INAM`` title, ``IPRD`` product, ``ICMT`` comment, ``ISFT`` software, ``ICRD`` date...),
    in Latin-1, which is how readers take INFO text when no ``CSET`` says otherwise (few read
    ``CSET``); what Latin-1 lacks is written as ``plain`` says, the full text is in ``iXML``."""
    body = b"INFO"
    for key, value in fields.items():
        if value:
            body += chunk(key.encode("ascii"), plain(value, "latin-1") + b"\0")
    return body


def ixml(fields: dict[str, str]) -> bytes:
    """The data of an ``iXML`` chunk (UTF-8 XML, iXML 2.x): ``PROJECT``, ``SCENE``, ``NOTE``
    and the rest as given, with the full Unicode text that ``bext`` and ``INFO`` cannot hold."""
    import html  # escape(quote=False) is xml.sax.saxutils.escape's &, < and >, without
    # importing xml.sax (9 ms of every render that tags a file)

    body = "".join(f"<{k}>{html.escape(v, quote=False)}</{k}>" for k, v in fields.items() if v)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<BWFXML><IXML_VERSION>2.10'
            f"</IXML_VERSION>{body}</BWFXML>").encode()


def fact(frames: int) -> bytes:
    """The data of a ``fact`` chunk: the frame count, which a WAV file whose samples are not
    PCM (IEEE float) must carry and libsndfile asks for."""
    return struct.pack("<I", frames & 0xFFFFFFFF)


def set_chunks(path: str | Path, before_data: dict[bytes, bytes],
               after_data: dict[bytes, bytes]) -> bool:
    """Put chunks into the finished WAV file at ``path``, replacing any of the same ids (a
    ``LIST`` is replaced only by a ``LIST`` of the same type). ``before_data`` go before the
    audio (where Broadcast Wave readers look for ``bext`` first), ``after_data`` after it.

    Where the file has room before its audio (a ``JUNK`` chunk there, which ``audio_io``
    reserves in every WAV file it writes), the chunks before the audio are rewritten in that
    room and those after it at the end, in place: the audio is not copied. Else the file is
    rewritten to a temporary file beside it and renamed into place. Returns False, leaving the
    file alone, when it is not a RIFF/WAVE file or would outgrow RIFF's 4 GiB.
    """
    path = Path(path)
    chunks = wav_chunks(path)
    if chunks is None or not any(c.id == b"data" for c in chunks):
        return False
    new = {**before_data, **after_data}

    def replaced(c: Chunk, f: BinaryIO) -> bool:
        if c.id != b"LIST" or b"LIST" not in new:
            return c.id in new
        f.seek(c.offset)
        return f.read(4) == new[b"LIST"][:4]

    pre = b"".join(chunk(k, v) for k, v in before_data.items())
    post = b"".join(chunk(k, v) for k, v in after_data.items())
    with path.open("rb") as src:
        kept = [c for c in chunks if not replaced(c, src)]
        size = 4 + len(pre) + len(post) + sum(8 + c.size + (c.size & 1) for c in kept)
        if size > RIFF_LIMIT:
            return False
        if _in_place(path, src, kept, pre, post):
            return True
        with atomic_path(path) as tmp, tmp.open("wb", buffering=0) as dst:
            dst.write(b"RIFF" + struct.pack("<I", size) + b"WAVE")
            for c in kept:
                if c.id == b"data":
                    dst.write(pre)
                dst.write(struct.pack("<4sI", c.id, c.size))
                _copy(src, dst, c.offset, c.size + (c.size & 1))
            dst.write(post)
    return True


IN_PLACE_MAX = 1 << 20  # chunks beside the audio read into memory to be laid out again


def _in_place(path: Path, src: BinaryIO, kept: list[Chunk], pre: bytes, post: bytes) -> bool:
    """``set_chunks`` without copying the audio, where the chunks before the ``data`` chunk
    (``JUNK`` dropped), then ``pre``, fit in front of it with room for a ``JUNK`` chunk over
    the rest (or exactly). The bytes after the audio are written (and the file cut) first, then
    the header in one write, so the audio itself is never touched. False: nothing was done."""
    i = next(k for k, c in enumerate(kept) if c.id == b"data")
    data = kept[i]
    head_end = data.offset - 8  # where the data chunk's header starts
    before = [c for c in kept[:i] if c.id != b"JUNK"]
    after = kept[i + 1:]
    body = sum(8 + c.size + (c.size & 1) for c in before + after)
    if not any(c.id == b"JUNK" for c in kept[:i]) or body > IN_PLACE_MAX:
        return False
    used = 12 + sum(8 + c.size + (c.size & 1) for c in before) + len(pre)
    room = head_end - used
    if room < 0 or 0 < room < 8:
        return False

    def raw(c: Chunk) -> bytes:
        src.seek(c.offset - 8)
        got = src.read(8 + c.size + (c.size & 1))
        return got + b"\0" * (8 + c.size + (c.size & 1) - len(got))  # a truncated pad byte

    audio_end = data.offset + data.size + (data.size & 1)
    tail = b"".join(raw(c) for c in after) + post
    head = b"".join(raw(c) for c in before) + pre
    if room:
        head += struct.pack("<4sI", b"JUNK", room - 8) + b"\0" * (room - 8)
    total = audio_end + len(tail)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, tail, audio_end)
        os.ftruncate(fd, total)
        os.pwrite(fd, b"RIFF" + struct.pack("<I", total - 8) + b"WAVE" + head, 0)
    finally:
        os.close(fd)
    return True


def _copy(src: BinaryIO, dst: BinaryIO, offset: int, n: int) -> None:
    """Copy ``n`` bytes of ``src`` from ``offset`` to the end of ``dst`` (unbuffered). The
    kernel copies (``copy_file_range``: no trip through Python, a reflink where the file
    system has them) when it can; a truncated last pad byte is written as zero."""
    with contextlib.suppress(OSError, AttributeError):  # another file system, no syscall
        while n > 0:
            k = os.copy_file_range(src.fileno(), dst.fileno(), n, offset)
            if k == 0:
                break
            offset, n = offset + k, n - k
    src.seek(offset)
    while n > 0:
        block = src.read(min(n, 1 << 22))
        if not block:
            dst.write(b"\0" * n)
            return
        dst.write(block)
        n -= len(block)

