"""The mix bus: the running sum of the stems over the whole timeline, in flat memory.

A short scene's sum is an array in memory (or in shared memory, for the stem processes); one too
long to hold is a temporary file on the disk the render writes to, laid out as the array is:
each channel's frames in a row of its own, one after the other (planar), so that a stretch of a
channel is one contiguous read and write and a block is summed without reordering its frames
(``os.pread``/``os.pwrite``: no mapping, so the memory the render holds does not grow with the
scene). Stages add blocks to it, the master
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

IN_MEMORY_BYTES = 1 << 27  # 128 MiB: 5.8 minutes of 48 kHz stereo; longer sums go to disk
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
                 fd: int | None = None, path: Path | None = None,
                 untouched_from: int | None = None) -> None:
        self.channels, self.frames = channels, frames
        self._row = frames  # frames a channel's row holds in a file (``fold`` shortens the signal)
        self.array = array
        self.fd = fd
        self.path = path  # a named file, removed on close
        # A file made zero for this bus alone: from this frame on nothing was written to it
        # yet, so an add there writes without reading zeros first (each stem process's first
        # stem then costs no read, and the disk no zeroed pages). None: not known, read.
        self._untouched = frames if untouched_from is None else untouched_from
        # the signal's sample peak, where ``add_bus`` saw every frame of it last; any other
        # change forgets it (None)
        self.peak: float | None = None

    @classmethod
    def temporary(cls, channels: int, frames: int, folder: Path | None = None) -> Bus:
        """A sum in memory when small, else in an unnamed temporary file in ``folder``."""
        if not on_disk(channels, frames):
            return cls(channels, frames, array=np.zeros((channels, frames), np.float32))
        with tempfile.TemporaryFile(dir=folder) as f:  # unlinked at once
            fd = os.dup(f.fileno())
        os.ftruncate(fd, channels * frames * 4)  # a sparse file: reads as zeros
        return cls(channels, frames, fd=fd, untouched_from=0)

    @classmethod
    def named(cls, channels: int, frames: int, path: Path, create: bool,
              fresh: bool = False) -> Bus:
        """A sum in the file ``path`` (made, zero, when ``create``): another process's part.
        ``fresh``: the file was made zero for this bus alone and nothing written to it yet
        (the process that made it only reads it, once this one is done); the maker's own bus
        does not assume so, the other process writing into it."""
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, channels * frames * 4)
        else:
            fd = os.open(path, os.O_RDWR)
        return cls(channels, frames, fd=fd, path=path if create else None,
                   untouched_from=0 if fresh and not create else None)

    @property
    def in_memory(self) -> bool:
        return self.array is not None

    def read(self, start: int, n: int, channels: range | None = None) -> np.ndarray:
        """Frames ``[start, start + n)`` as a new ``(channels, n)`` array; ``channels``: of
        those channels only (a range of step 1)."""
        n = max(0, min(n, self.frames - start))
        rows = range(self.channels) if channels is None else channels
        if self.array is not None:
            return self.array[rows.start:rows.stop, start:start + n].copy()
        return self._read_rows(start, n, rows)

    def _at(self, channel: int, frame: int) -> int:
        """Where a channel's frame lies in the file, in bytes."""
        return (channel * self._row + frame) * 4

    def _read_rows(self, start: int, n: int, rows: range | None = None) -> np.ndarray:
        """Frames ``[start, start + n)`` of the file's channels ``rows`` (all): a new
        ``(len(rows), n)`` array."""
        assert self.fd is not None
        rows = range(self.channels) if rows is None else rows
        out = np.empty((len(rows), n), np.float32)
        for i, c in enumerate(rows):
            view = memoryview(out[i].data).cast("B")
            got = 0
            while got < len(view):
                k = os.preadv(self.fd, [view[got:]], self._at(c, start) + got)
                if k == 0:
                    raise OSError(f"the mix bus file ends in channel {c} at frame "
                                  f"{start + got // 4} of {self.frames}")
                got += k
        return out

    def _write_rows(self, start: int, block: np.ndarray) -> None:
        """Write a ``(channels, n)`` block at frame ``start``."""
        assert self.fd is not None
        for c in range(self.channels):
            view = memoryview(np.ascontiguousarray(block[c], np.float32).data).cast("B")
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self._at(c, start) + done)

    def write(self, start: int, block: np.ndarray) -> None:
        """Overwrite frames ``[start, start + block frames)`` with ``block``."""
        self.peak = None
        if self.array is not None:
            self.array[:, start:start + block.shape[1]] = block
            return
        self._write_rows(start, block)
        self._untouched = max(self._untouched, start + block.shape[1])

    def add(self, start: int, block: np.ndarray) -> None:
        """Add ``block`` (``(channels, n)``) into frames ``[start, start + n)``."""
        self._add(start, block)
        self.peak = None

    def _add(self, start: int, block: np.ndarray) -> list[np.ndarray]:
        """``add``; returns the frames added into as they now are (in pieces)."""
        if self.array is not None:
            view = self.array[:, start:start + block.shape[1]]
            view += block
            return [view]
        n = block.shape[1]
        known = min(n, max(0, self._untouched - start))  # frames that may hold a sum already
        pieces = []
        if known:
            now = self._read_rows(start, known)
            now += block[:, :known]
            self._write_rows(start, now)
            pieces.append(now)
        if known < n:  # zeros so far: the block is the sum
            self._write_rows(start + known, block[:, known:])
            pieces.append(block[:, known:])
        self._untouched = max(self._untouched, start + n)
        return pieces

    def blocks(self, size: int = BLOCK) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` over the whole signal, in order."""
        for start in range(0, self.frames, size):
            yield start, self.read(start, size)

    def add_bus(self, other: Bus, size: int = BLOCK) -> None:
        """Add another bus of the same shape into this one, block by block. Every frame of the
        result passes by, so its sample peak is kept (``peak``), which the sum's measuring
        would otherwise read the whole bus for."""
        peak = 0.0
        for start, block in other.blocks(size):
            pieces = self._add(start, block) if block.any() else \
                [self.read(start, block.shape[1])]
            for piece in pieces:
                if piece.size:
                    peak = max(peak, float(piece.max()), -float(piece.min()))
        self.peak = peak

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
