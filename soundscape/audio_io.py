"""Files stage: read, write and resample audio; every write is atomic.

Input: paths and float32 ``(channels, frames)`` arrays. Output: the same, on disk or in memory.
Writing goes to a temporary name beside the target and is renamed into place, so a failed or
interrupted write never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FORMATS = ("wav", "flac", "ogg", "mp3")
WAV_BIT_DEPTHS = (16, 24, 32)
# A temporary file of atomic_path: ".<stem>.<writer pid>-<random>.tmp<suffix>".
_TEMP = re.compile(r"^\..*\.(\d+)-[A-Za-z0-9_]+\.tmp(\.[^.]*)?$")
STALE_TEMP_AGE_S = 24 * 3600.0  # past this without a write, a temp is stale whoever wrote it
_OURS: set[str] = set()  # temps this process is writing (its pid may be a dead run's, reused)
WRITE_BUFFER = 1 << 20  # bytes an encoder's writes are gathered into
# Bytes a WAV file is written after, so that its tags (``fact``, ``bext``: about 700 bytes) can
# later go before the audio in place instead of by copying the file (``riff.set_chunks``); the
# room reads as a ``JUNK`` chunk, which every RIFF reader skips.
WAV_RESERVE = 2048


def forget_cached(path: str | Path | int, upto: int = 0, start: int = 0) -> None:
    """Drop the page cache of a file this render replaces and does not read again (bytes
    ``[start, upto)``; ``upto`` 0: to the end), so that the pages of the file written in its
    place reuse that memory rather than take pages from the free pool: on a virtual machine
    whose host reclaims the memory its guest frees, a page never used since costs the host a
    fault (measured here: a 173 MB stem written into new pages in 0.40 s, into pages just
    freed in 0.05 s). The data stays on the disk (dirty pages are written out first, and not
    dropped); a later read of it only reads the disk. Nothing where there is no
    ``posix_fadvise`` (macOS) or the file is gone.

    ``path`` may be a descriptor open on the file (left open): a file read while another is
    renamed onto its name must be named by its descriptor, or the new file's pages go."""
    if not hasattr(os, "posix_fadvise") or 0 < upto <= start:
        return
    try:
        fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, start, upto - start if upto else 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        if fd is not path:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary name keeps the target's suffix so writers that infer the format from the
    extension (pedalboard.io) still work, and carries the writer's process id, so that
    ``remove_stale_temps`` can tell a file left by a killed process from one being written. On
    any exception, KeyboardInterrupt included, the temporary file is removed and ``target`` is
    left as it was; after ``kill -9`` only the temporary file remains, never a partial target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}-",
                                suffix=f".tmp{target.suffix}", dir=target.parent)
    tmp = Path(name)
    try:  # from the first instruction on: an interrupt here must not leave the file behind
        _OURS.add(os.path.abspath(name))
        os.close(fd)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; finished files get normal modes
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        _OURS.discard(os.path.abspath(name))


def remove_stale_temps(folder: str | Path, max_age_s: float = STALE_TEMP_AGE_S,
                       dead: frozenset[int] = frozenset()) -> list[Path]:
    """Remove the temporary files of ``atomic_path`` in ``folder`` left by dead processes.

    A temp is stale when the process named in it is gone, or when nothing has written to it for
    ``max_age_s`` (its pid may have been reused, or it came from another machine). Temps of live
    writers, such as a second render running at the same time, are left alone; ``dead``: pids
    known to be gone (or going) whatever the system still says. Returns the removed paths.
    """
    from .locks import pid_alive

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
        except OSError:
            continue
        pid = int(m.group(1))
        mine = pid == os.getpid() and os.path.abspath(entry.path) not in _OURS
        if old or mine or pid in dead or not pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _wav_data_short(path: Path) -> int:
    """Bytes missing from a WAV file's data chunk (its header says more than the file holds).

    Decoders fill what is missing with silence, so a truncated download would play as a gap.
    Returns 0 when whole or not a RIFF/WAVE file.
    """
    import struct

    try:
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return 0
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, length = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"data":
                    return max(0, pos + 8 + length - size) if length != 0xFFFFFFFF else 0
                pos += 8 + length + (length & 1)
    except OSError:
        return 0
    return 0


def user_path(value: str, base_dir: str | Path | None) -> Path:
    """A path written in a scene: ``~`` expanded, relative paths taken from ``base_dir``."""
    path = Path(value).expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


def audio_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as audio (missing, a folder, undecodable, empty, truncated),
    or None when it can. Reads the header only."""
    p = Path(path)
    if p.is_dir():
        return "is a folder, not an audio file"
    if not p.is_file():
        return "not found"
    try:
        from pedalboard.io import AudioFile

        with AudioFile(str(p)) as f:
            frames = f.frames
    except Exception as e:  # pedalboard raises several types for unreadable files
        first = str(e).split(";")[0].split(":")[0] if str(e) else type(e).__name__
        return f"is not readable audio ({first}); use wav, flac, ogg or mp3"
    if frames == 0:
        return "holds no audio"
    short = _wav_data_short(p)
    if short:
        return f"is truncated ({short} bytes of its audio are missing); copy it again"
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file pedalboard.io can decode.

    Returns:
        ``(audio, sample_rate)`` with audio float32 shaped ``(channels, frames)``.
    """
    from pedalboard.io import AudioFile

    with AudioFile(str(path)) as f:
        audio = f.read(f.frames)
        sr = int(round(f.samplerate))
    return np.ascontiguousarray(audio, dtype=np.float32), sr


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """High-quality resampling (soxr VHQ) of ``(channels, frames)`` float32 audio."""
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    import soxr

    out = soxr.resample(audio.T, from_hz, to_hz, quality="VHQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).T.reshape(audio.shape[0], -1))


def _writer_options(fmt: str, bit_depth: int | None) -> dict[str, object]:
    if fmt == "wav":
        return {"bit_depth": bit_depth or 24}
    if fmt == "flac":
        return {"bit_depth": min(bit_depth or 24, 24)}
    if fmt == "mp3":
        return {"quality": "V0"}
    return {}


def written_bit_depth(fmt: str, bit_depth: int | None) -> int | None:
    """The bit depth a file of ``fmt`` is written at when ``bit_depth`` is asked (None: the
    default); None for the lossy formats, which have none."""
    depth = _writer_options(fmt, bit_depth).get("bit_depth")
    return depth if isinstance(depth, int) else None


def output_problem(fmt: str, sample_rate: int, channels: int, bit_depth: int | None) -> str | None:
    """Why pedalboard cannot write ``fmt`` at this rate, channel count and bit depth, or None.

    Asked of the encoder itself (an empty in-memory file), so the answer is the library's.
    """
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}"
    if bit_depth is not None and bit_depth not in WAV_BIT_DEPTHS:
        return f"--bit-depth {bit_depth} is not supported; use 16, 24 or 32"
    if bit_depth is not None and fmt in ("ogg", "mp3"):
        return (f"--bit-depth {bit_depth}: {fmt} files are lossy and have no bit depth; leave "
                f"out --bit-depth, or use --format wav or flac")
    if bit_depth == 32 and fmt != "wav":
        return f"32-bit float is written as wav only; use --format wav or --bit-depth 24 ({fmt})"
    import io

    from pedalboard.io import AudioFile

    try:
        with AudioFile(io.BytesIO(), "w", sample_rate, channels, format=fmt,  # type: ignore
                       **_writer_options(fmt, bit_depth)):
            pass
    except Exception as e:  # pedalboard raises ValueError, sometimes RuntimeError
        reason = str(e).split("\n")[0]
        return f"cannot write {fmt} at {sample_rate} Hz ({reason}); use wav or flac, or a rate "\
               f"the format supports"
    return None


class AtomicAudioWriter:
    """Stream ``(channels, frames)`` blocks into an audio file that appears only when complete.

    Use as a context manager; on an exception the partial file is deleted. A WAV file starts
    with ``WAV_RESERVE`` bytes of room (a ``JUNK`` chunk) for its tags. With
    ``background=True`` blocks are encoded and written by a thread (pedalboard releases the GIL
    while it encodes), so writing overlaps the work that produces the next block; the blocks
    handed to ``write`` must then not be modified afterwards.
    """

    def __init__(self, target: str | Path, sample_rate: int, channels: int,
                 bit_depth: int | None = None, background: bool = False) -> None:
        self.target = Path(target)
        self.sample_rate = sample_rate
        self.channels = channels
        self.fmt = self.target.suffix.lstrip(".").lower()
        self.bit_depth = bit_depth
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._file: Any = None
        self._background = background
        self._queue: queue.Queue[np.ndarray | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._shifted: _Shifted | None = None
        self._buffered: io.BufferedWriter | None = None
        self.frames_written = 0

    def __enter__(self) -> AtomicAudioWriter:
        from pedalboard.io import AudioFile

        self._ctx = atomic_path(self.target)
        tmp = self._ctx.__enter__()
        try:
            options = _writer_options(self.fmt, self.bit_depth)  # 32-bit WAV is IEEE float
            if self.fmt == "wav":
                self._shifted = _Shifted(tmp, WAV_RESERVE)
                # the encoder writes a few kilobytes at a time: gathered in C, written in
                # megabytes (a quarter less time per file than a Python call per piece)
                self._buffered = io.BufferedWriter(self._shifted, WRITE_BUFFER)
                self._file = AudioFile(  # type: ignore[call-overload]
                    self._buffered, "w", self.sample_rate, self.channels, format="wav",
                    **options)
            else:
                self._file = AudioFile(  # type: ignore[call-overload]
                    str(tmp), "w", self.sample_rate, self.channels, **options)
        except BaseException:
            if self._shifted is not None:
                self._shifted.release()
            self._ctx.__exit__(*sys.exc_info())
            raise
        if self._background:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._drain, daemon=True)
            self._thread.start()
        return self

    def _drain(self) -> None:
        assert self._queue is not None
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._file.write(block)
                except BaseException as e:  # reported by the next write() or on exit
                    self._error = e

    def write(self, block: np.ndarray) -> None:
        """Append a float32 ``(channels, frames)`` block."""
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected ({self.channels}, frames), got {block.shape}")
        if self._error is not None:
            raise self._error
        data = np.ascontiguousarray(block, dtype=np.float32)
        if self._queue is not None:
            self._queue.put(data)
        else:
            self._file.write(data)
        self.frames_written += block.shape[1]

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        assert self._ctx is not None
        try:
            if self._thread is not None and self._queue is not None:
                self._queue.put(None)
                self._thread.join()
            if self._file is not None:
                try:
                    self._file.close()
                except SystemError as e:
                    # the buffer's last write failed inside the encoder's close (a full
                    # disk): pedalboard raises that as a SystemError caused by the OSError
                    if isinstance(e.__cause__, OSError):
                        raise e.__cause__ from None
                    raise
            if self._shifted is not None:
                assert self._buffered is not None
                if not self._buffered.closed:
                    self._buffered.flush()
                self._shifted.finish()
        except BaseException:
            if self._shifted is not None:
                self._shifted.release()
            self._ctx.__exit__(*sys.exc_info())
            raise
        if exc_type is None and self._error is not None:
            err = self._error
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise err
        self._ctx.__exit__(exc_type, exc, tb)


class _Shifted(io.RawIOBase):
    """The file pedalboard writes a WAV into, seen ``offset`` bytes further on: the bytes
    before are left for tags. ``finish`` turns them into a ``JUNK`` chunk in front of the
    encoder's own chunks (one RIFF file again), or, where that cannot be (an RF64 file past
    4 GiB, whose ``ds64`` must come first), moves the encoder's file down to offset 0."""

    # What has been written is handed to the disk and dropped from the page cache behind the
    # writing: every ``HANDOFF_STEP`` bytes, the last ``HANDOFF_WINDOW`` but ``HANDOFF_LAG``
    # are advised away (``posix_fadvise`` DONTNEED starts the writeback of dirty pages and
    # drops the clean ones; a stretch passes under the window several times, by when most of it
    # is written). The rest of the file, and the next one, then reuse those pages rather than
    # take pages from the free pool, which on this virtual machine cost ~10 us each to touch
    # (``forget_cached``). The 10-minute benchmark through the command line: 7.5-8.3 s ->
    # 6.1-7.1 s, system time 3.7-5.3 s -> 1.7-2.9 s (three runs each, alternated). A render's
    # files then no longer fill the page cache; reading them later reads the disk. Where the
    # disk is slow (a hard disk, a USB stick), starting the writeback can block on its queue:
    # a handoff that takes longer than ``HANDOFF_SLOW`` ends them for the file, which is then
    # left to the kernel's writeback as before, so the render does not wait on the disk. So
    # does a disk that makes every handoff a little under that: over a file, the handoffs may
    # take ``HANDOFF_SLOW`` plus ``HANDOFF_BUDGET`` a step on average (a step saves at most
    # ~20 ms here, 2048 pages at ~10 us; nothing where free pages are cheap). A disk found
    # slow is left to the kernel for the next files too, for ``HANDOFF_REST`` seconds (else
    # each of a render's tens of files pays its own slow first handoff).
    HANDOFF_STEP = 8 << 20
    HANDOFF_WINDOW = 64 << 20
    HANDOFF_LAG = 1 << 20  # the encoder may still rewrite what it wrote last
    # nor its head: the encoder rewrites its header at close, ``finish`` the RIFF header and
    # tagging the chunks before the audio, each a read of the disk where the page was dropped
    HANDOFF_HEAD = 1 << 16
    HANDOFF_SLOW = 0.05  # seconds
    HANDOFF_BUDGET = 0.01  # seconds a step, on average
    HANDOFF_REST = 60.0  # seconds
    _slow_until: ClassVar[dict[int, float]] = {}  # device -> time.monotonic() it is tried again

    def __init__(self, path: Path, offset: int) -> None:
        super().__init__()
        assert offset % 2 == 0 and offset >= 20
        self.path, self.offset, self.pos = path, offset, 0
        self.fd = os.open(path, os.O_RDWR | os.O_TRUNC)
        self._dev = os.fstat(self.fd).st_dev
        # the end of the file at the last handoff (none on a disk found slow a while ago)
        self._handed = 0 if self._slow_until.get(self._dev, 0.0) <= time.monotonic() \
            else sys.maxsize
        self._spent, self._steps = 0.0, 0  # seconds in handoffs, and how many

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.offset + self.pos + done)
        self.pos += done
        end = self.offset + self.pos
        if end - self._handed >= self.HANDOFF_STEP and hasattr(os, "posix_fadvise"):
            if self._slow_until.get(self._dev, 0.0) > time.monotonic():  # found slow meanwhile
                self._handed = sys.maxsize
                return done
            start = max(self.offset + self.HANDOFF_HEAD, end - self.HANDOFF_WINDOW)
            t0 = time.perf_counter()
            forget_cached(self.fd, end - self.HANDOFF_LAG, start)
            took = time.perf_counter() - t0
            self._spent += took
            self._steps += 1
            slow = took > self.HANDOFF_SLOW \
                or self._spent > self.HANDOFF_SLOW + self._steps * self.HANDOFF_BUDGET
            self._handed = sys.maxsize if slow else end
            if slow:
                self._slow_until[self._dev] = time.monotonic() + self.HANDOFF_REST
        return done

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pos
        elif whence == 2:
            pos += os.fstat(self.fd).st_size - self.offset
        self.pos = max(0, pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def finish(self) -> None:
        import struct

        try:
            end = os.fstat(self.fd).st_size
            head = os.pread(self.fd, 12, self.offset)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE" and end - 8 <= 0xFFFFFFFF:
                # RIFF <size> WAVE, then JUNK over the room and the encoder's own header
                os.pwrite(self.fd, b"RIFF" + struct.pack("<I", end - 8) + b"WAVE" + b"JUNK"
                          + struct.pack("<I", self.offset - 8), 0)
            else:
                _move_down(self.fd, self.offset, end)
        finally:
            self.release()

    def release(self) -> None:
        """Close the file (``close`` is the encoder's, and may come first)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _move_down(fd: int, offset: int, end: int, step: int = 1 << 24) -> None:
    """Move bytes ``[offset, end)`` of a file to its start and cut it there."""
    pos = offset
    while pos < end:
        data = os.pread(fd, min(step, end - pos), pos)
        os.pwrite(fd, data, pos - offset)
        pos += len(data)
    os.ftruncate(fd, end - offset)


def write_audio(target: str | Path, audio: np.ndarray, sample_rate: int,
                bit_depth: int | None = None) -> Path:
    """Write float32 ``(channels, frames)`` audio atomically; the format follows the suffix."""
    with AtomicAudioWriter(target, sample_rate, audio.shape[0], bit_depth) as w:
        w.write(audio)
    return Path(target)
