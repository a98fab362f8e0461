"""The mix bus: the running sum of the stems over the whole timeline, in flat memory.

A short scene's sum is an array in memory (or in shared memory, for the stem processes); one too
long to hold is a temporary file on the disk the render writes to, frames interleaved, so a
stretch of time is one contiguous read and write (``os.pread``/``os.pwrite``: no mapping, so
the memory the render holds does not grow with the scene). Stages add blocks to it, the master
reads it back block by block, and may overwrite it with its effects' output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

IN_MEMORY_BYTES = 1 << 27  # 128 MiB: 11.6 minutes of 48 kHz stereo; longer sums go to disk
BLOCK = 1 << 16


def on_disk(channels: int, frames: int) -> bool:
    """Whether a sum of this shape is kept in a temporary file rather than in memory."""
    return channels * frames * 4 > IN_MEMORY_BYTES


class Summing(Protocol):
    """What the stem stage adds its stems into: a ``Bus``, or anything that takes its blocks
    in the same way (``sumcache.Update`` updates a cached sum as one stem is rendered)."""

    channels: int
    frames: int

    def add(self, start: int, block: np.ndarray) -> None: ...


class Bus:
    """A float32 ``(channels, frames)`` signal, zero until blocks are added, in memory or in a
    file. Use as a context manager or call ``close``: a file is removed on close (one made by
    ``Bus.temporary`` has no name at all, so even ``kill -9`` leaves nothing behind)."""

    def __init__(self, channels: int, frames: int, array: np.ndarray | None = None,
                 fd: int | None = None, path: Path | None = None) -> None:
        self.channels, self.frames = channels, frames
        self.array = array
        self.fd = fd
        self.path = path  # a named file, removed on close

    @classmethod
    def temporary(cls, channels: int, frames: int, folder: Path | None = None) -> Bus:
        """A sum in memory when small, else in an unnamed temporary file in ``folder``."""
        if not on_disk(channels, frames):
            return cls(channels, frames, array=np.zeros((channels, frames), np.float32))
        with tempfile.TemporaryFile(dir=folder) as f:  # unlinked at once
            fd = os.dup(f.fileno())
        os.ftruncate(fd, channels * frames * 4)  # a sparse file: reads as zeros
        return cls(channels, frames, fd=fd)

    @classmethod
    def named(cls, channels: int, frames: int, path: Path, create: bool) -> Bus:
        """A sum in the file ``path`` (made, zero, when ``create``): another process's part."""
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, channels * frames * 4)
        else:
            fd = os.open(path, os.O_RDWR)
        return cls(channels, frames, fd=fd, path=path if create else None)

    @property
    def in_memory(self) -> bool:
        return self.array is not None

    def read(self, start: int, n: int) -> np.ndarray:
        """Frames ``[start, start + n)`` as a new ``(channels, n)`` array."""
        n = max(0, min(n, self.frames - start))
        if self.array is not None:
            return self.array[:, start:start + n].copy()
        return self._read_frames(start, n).T.copy()

    def _read_frames(self, start: int, n: int) -> np.ndarray:
        """Frames ``[start, start + n)`` of the file as they lie in it: ``(n, channels)``,
        writable."""
        assert self.fd is not None
        size = n * self.channels * 4
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            k = os.preadv(self.fd, [view[got:]], (start * self.channels) * 4 + got)
            if k == 0:
                raise OSError(f"the mix bus file ends at frame {start + got // 4} of "
                              f"{self.frames}")
            got += k
        return np.frombuffer(data, np.float32).reshape(n, self.channels)

    def _write_frames(self, start: int, frames: np.ndarray) -> None:
        """Write ``(n, channels)`` C-contiguous float32 frames at frame ``start``."""
        assert self.fd is not None
        view = memoryview(frames.data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], start * self.channels * 4 + done)

    def write(self, start: int, block: np.ndarray) -> None:
        """Overwrite frames ``[start, start + block frames)`` with ``block``."""
        if self.array is not None:
            self.array[:, start:start + block.shape[1]] = block
            return
        assert self.fd is not None
        self._write_frames(start, np.ascontiguousarray(np.asarray(block, np.float32).T))

    def add(self, start: int, block: np.ndarray) -> None:
        """Add ``block`` (``(channels, n)``) into frames ``[start, start + n)``."""
        if self.array is not None:
            self.array[:, start:start + block.shape[1]] += block
            return
        # summed where the frames lie, interleaved: no copy to and from the planar layout
        now = self._read_frames(start, block.shape[1])
        now += block.T
        self._write_frames(start, now)

    def blocks(self, size: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` over the whole signal, in order."""
        for start in range(0, self.frames, size):
            yield start, self.read(start, size)

    def add_bus(self, other: Bus, size: int = BLOCK) -> None:
        """Add another bus of the same shape into this one, block by block."""
        for start, block in other.blocks(size):
            if block.any():
                self.add(start, block)

    def fold(self, frames: int) -> None:
        """Make the bus a loop of ``frames``: what lies past them (the tails and loops that
        play on past the end) is added onto the start, as a circular timeline would hear it,
        and the bus ends at ``frames`` (what lies past twice the length lands on the start
        again, modulo the length). (Loops that span the wrap fade out past the end and in at
        the start, so the sum crossfades them: ``arrange.wrap_around``.)"""
        if self.frames <= frames:
            return
        # past the loop's length, every stretch of it lands on the loop again (a tail longer
        # than the loop rings through several turns), block by block
        for start in range(frames, self.frames, BLOCK):
            block = self.read(start, min(BLOCK, self.frames - start))
            at = start % frames
            while block.shape[1]:
                k = min(block.shape[1], frames - at)
                self.add(at, block[:, :k])
                block, at = block[:, k:], 0
        self.frames = frames

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None
        self.array = None

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
