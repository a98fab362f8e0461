"""The pre-master sum a render leaves for the next one (incremental renders).

Input: a render folder, the stem keys its sum is made of, the earlier render's manifest. Output:
``.cache/sum.f32`` (the float32 sum of the stems before the master, each channel's frames in a
row of their own, as the mix bus holds it on disk) and ``.cache/sum.json`` (what it is the sum
of). The next render of the folder starts from that sum, subtracts the stems that changed as
their earlier files hold them and adds their new renders, instead of reading every kept stem
back: an edit to one element reads one old stem, not all of them (``open_stem``, ``subtract``),
and the updated sum is measured once for the master (``master.measure_sum``).

Trust: the index names the stem key of every element in the sum, the size and modification time
of each stem's file as the sum was saved, and the sum file's size and modification time. It is
removed before the sum file is touched and written (whole, atomically) only once the sum is
complete, so a render that fails or is killed half-way leaves no index, and the sum is then
rebuilt from the stems. A changed stem is subtracted only when its file is the one the index's
key names (the earlier manifest's key, size and format) and can be read back exactly enough
(``incremental.summable``); a stem file of the sum replaced since (a user's edit keeps its
size, not its modification time) makes the sum untrusted: subtracted, it would leave the
difference in the sum; kept, the stems on disk would no longer sum to the mix. Each such edit
leaves the error of the subtracted file's rounding (up to a step of its bit depth: 1.2e-7 at
24 bits) in the sum, always of one sign; after ``max_edits`` of them (16, 3 at 16 bits) the
sum is rebuilt from the stems.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio_io import atomic_path, atomic_write_text, forget_cached
from ..dsp.bus import BLOCK, Bus, on_disk
from ..dsp.meter import Meter
from ..errors import RenderError
from ..master import LIMITER_DETECTOR, SumLevels, sum_true_peak_db
from .incremental import Output, stored_is_current, summable
from .manifest import Manifest

CACHE_DIR = ".cache"
TAKES_DIR = "takes"  # the elements' conformed takes (``takes.conform.KeptTakes``)
SUM_FILE = "sum.f32"
INDEX_FILE = "sum.json"
# 2: the stem files' size and modification time; 3: channels in rows; 4: the stems' energies
# packed (``_packed``)
VERSION = 4
# a stem's levels entry: the sum holds the stem as rendered, not as its file reads back
# (``CachedSum.holds_as_rendered``)
RENDERED = "as_rendered"
MAX_EDITS = 16  # subtractions in a row before the sum is rebuilt from the stems
# The encoder floors integer PCM, so each subtracted file leaves up to one step of its bit depth
# in the sum, always of one sign: the error grows a step per edit (measured: 16 bits 3.05e-5 a
# step, 24 bits about 1e-7). The sum is rebuilt before it can carry more than this.
MAX_DRIFT = 1e-4


def rounding_step(out: Output) -> float:
    """A step of ``out``'s stems' bit depth (0 for float stems, read back exactly): the most a
    stem read back from its file is off the stem that was rendered."""
    from ..audio_io import written_bit_depth

    depth = written_bit_depth(out.fmt, out.bit_depth)
    if out.float_stems or depth is None:
        return 0.0
    return 2.0 ** -(depth - 1)


def max_edits(out: Output) -> int:
    """Edits in a row that ``out``'s stems allow before the sum is rebuilt: ``MAX_EDITS``, fewer
    where a step of the stems' bit depth would add up past ``MAX_DRIFT`` (3 at 16 bits)."""
    step = rounding_step(out)
    if step == 0.0:
        return MAX_EDITS
    return max(1, min(MAX_EDITS, int(MAX_DRIFT / step)))


@dataclass(frozen=True)
class CachedSum:
    """What the cached sum is made of: element -> stem key, and how many edits it has had."""

    stems: dict[str, str]
    edits: int
    files: dict[str, list[int]]  # element -> [bytes, mtime_ns] of its stem file at the save
    # element -> its stem's measurements with its level-free key and volume (``levels``)
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    sample_peak: float | None = None  # the sum's (None: not known)

    def volume_change(self, name: str, level_free: str, volume_db: float) -> float | None:
        """The linear gain from ``name``'s stem in the sum to the same stem at ``volume_db``,
        where that is its only change (the same level-free key; both volumes finite); None
        otherwise."""
        got = self.levels.get(name)
        if not isinstance(got, dict) or got.get("level_free") != level_free:
            return None
        old = got.get("volume_db")
        if not isinstance(old, int | float) or not (math.isfinite(old)
                                                    and math.isfinite(volume_db)):
            return None
        return float(10 ** ((volume_db - old) / 20))

    def holds_as_rendered(self, name: str, out: Output) -> bool:
        """Whether the sum holds ``name``'s stem as it was rendered, to the bit of the float
        blocks added (``RENDERED``), rather than as its file reads back (a kept stem read into
        a rebuilt sum: up to a step of its bit depth off). Float stems read back exactly."""
        got = self.levels.get(name)
        return rounding_step(out) == 0.0 or (isinstance(got, dict)
                                            and got.get(RENDERED) is True)

    def known_levels(self, name: str, level_free: str, volume_db: float,
                     sample_rate: int) -> Meter | None:
        """The measurements of ``name``'s stem at ``volume_db``, from its earlier render at
        another volume (the same level-free key), scaled; None where there is none."""
        gain = self.volume_change(name, level_free, volume_db)
        if gain is None:
            return None
        got = self.levels[name]
        try:
            meter = Meter.restored(sample_rate, **{
                k: got[k] for k in ("energies", "frames", "sample_peak", "true_peak")})
        except (KeyError, TypeError, ValueError):
            return None
        return meter.scaled(gain)

    def peak_after(self, name: str, level_free: str, volume_db: float, step: float) -> float:
        """A level the sum reaches once ``name``'s stem, whose only change is its volume, is
        at ``volume_db``: the sum's sample peak less the most that moves any sample, ``|gain
        - 1|`` times the stem's sample peak and ``step`` (``rounding_step``: the earlier stem
        is subtracted as its file reads back), a thousandth under for float rounding; 0 where
        it is not known. A true peak read from there interpolates fewer gaps."""
        gain = self.volume_change(name, level_free, volume_db)
        stem_peak = self.levels[name].get("sample_peak") if gain is not None else None
        if self.sample_peak is None or gain is None or not isinstance(stem_peak, int | float):
            return 0.0
        return max(0.0, (self.sample_peak - abs(gain - 1.0) * stem_peak - step) * (1 - 1e-3))


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _paths(directory: Path) -> tuple[Path, Path]:
    folder = directory / CACHE_DIR
    return folder / SUM_FILE, folder / INDEX_FILE


def _shape(out: Output) -> dict[str, int]:
    return {"sample_rate": out.sample_rate, "channels": out.channels, "frames": out.frames}


def read(directory: Path, out: Output) -> CachedSum | None:
    """The cached sum of ``directory`` if its index is whole, is of ``out``'s shape and still
    describes the sum file on disk; else None."""
    path, index = _paths(directory)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION \
            or data.get("shape") != _shape(out):
        return None
    size = out.channels * out.frames * 4
    if data.get("file") != {"bytes": size, "mtime_ns": st.st_mtime_ns} \
            or st.st_size != size:
        return None
    stems, edits, files = data.get("stems"), data.get("edits"), data.get("files")
    levels = data.get("levels", {})
    peak = data.get("sample_peak")
    if not isinstance(stems, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in stems.items()) \
            or not isinstance(edits, int) or not isinstance(files, dict) \
            or not isinstance(levels, dict):
        return None
    levels = {name: _unpacked(got) for name, got in levels.items() if isinstance(got, dict)}
    return CachedSum(stems, edits, files, levels,
                     float(peak) if isinstance(peak, int | float) else None)


def old_stems(cached: CachedSum | None, keep: dict[str, str], previous: Manifest | None,
              directory: Path, out: Output) -> dict[str, Path] | None:
    """The earlier stem files to subtract from the cached sum so that it holds only the stems
    in ``keep`` (element -> key, the stems kept as they are): every element of the sum that is
    not kept with the same key. None when the sum cannot be used: missing, edited too often, or
    one of those files is not the one the sum holds or cannot be read back exactly, or a stem
    file of the sum was replaced since it was saved."""
    if cached is None or cached.edits >= max_edits(out):
        return None
    found: dict[str, Path] = {}
    for name, key in cached.stems.items():
        rec = previous.element(name) if previous is not None else None
        if rec is None or rec.stem is None:
            return None
        path = directory / rec.stem
        if _stat(path) != cached.files.get(name):
            return None
        if keep.get(name) == key:
            continue
        if not stored_is_current(rec, key, directory, path) or not summable(rec, out):
            return None
        found[name] = path
    return found


def plan_update(cached: CachedSum | None, kept: dict[str, Path], keys: dict[str, str],
                previous: Manifest | None, directory: Path, out: Output) \
        -> tuple[dict[str, Path] | None, dict[str, Path]]:
    """How this render builds its sum from ``cached``: the earlier stem files to subtract from
    it (None: start from zeros) and, of the ``kept`` stems (element -> file, whose keys are in
    ``keys``), those still to read into it. The cached sum is used only when that reads fewer
    files than reading every kept stem."""
    old = old_stems(cached, {n: keys[n] for n in kept}, previous, directory, out)
    if old is None or cached is None:
        return None, kept
    reread = {n: path for n, path in kept.items() if cached.stems.get(n) != keys[n]}
    if len(old) + len(reread) >= len(kept):
        return None, kept  # as many files to read as without the cached sum
    return old, reread


def drop(directory: Path) -> None:
    """Remove the cached sum and its index (a render that cannot keep one, or not yet), and
    the conformed takes kept beside it."""
    path, index = _paths(directory)
    for p in (index, path):  # the index first: a sum without one is never trusted
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    shutil.rmtree(directory / CACHE_DIR / TAKES_DIR, ignore_errors=True)


def open_bus(directory: Path, out: Output, reuse: bool) -> Bus:
    """The mix bus of a render that keeps its sum: the cached sum's samples (``reuse``) or
    zeros. Its index is removed first, so the sum is untrusted until ``save``. A sum too long
    to hold is the cache file itself (worked in place); a shorter one is read into memory."""
    path, index = _paths(directory)
    with contextlib.suppress(FileNotFoundError):
        index.unlink()
    channels, frames = out.channels, out.frames
    if not on_disk(channels, frames):
        if reuse:
            data = np.fromfile(path, np.float32).reshape(channels, frames)
            return Bus(channels, frames, array=data)
        return Bus(channels, frames, array=np.zeros((channels, frames), np.float32))
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if reuse else os.O_TRUNC), 0o644)
    try:
        os.ftruncate(fd, channels * frames * 4)  # a new one is sparse: reads as zeros
    except OSError:
        os.close(fd)
        raise
    return Bus(channels, frames, fd=fd, untouched_from=None if reuse else 0)


def save(directory: Path, bus: Bus, out: Output, stems: dict[str, str], edits: int,
         files: dict[str, Path], levels: dict[str, dict[str, Any]] | None = None,
         sample_peak: float | None = None) -> None:
    """Keep ``bus`` (the complete pre-master sum of ``stems``, element -> key, whose files are
    ``files``) for the next render: the samples first (a sum held in memory is written to a
    temporary name and renamed), then the index that vouches for them. ``levels``: each
    stem's measurements (``Meter.figures``) with its level-free key and volume, which a
    later render of the stem at another volume scales (``CachedSum.known_levels``)."""
    path, index = _paths(directory)
    if bus.array is not None:
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            np.ascontiguousarray(bus.array).tofile(tmp)
    st = path.stat()
    data: dict[str, Any] = {
        "version": VERSION, "shape": _shape(out), "edits": edits, "stems": stems,
        "files": {name: _stat(p) for name, p in files.items()},
        "file": {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
        "levels": {name: _packed(got) for name, got in (levels or {}).items()},
        "sample_peak": sample_peak}
    atomic_write_text(index, json.dumps(data, separators=(",", ":"), sort_keys=True))


# A stem's ten energies a second, as JSON numbers, made the index 1.2 MB for the 10-minute,
# 12-element benchmark: 29 ms to write and 10 ms to read, both in an edit's serial part.
# Packed as little-endian float64 in base64 (the same values, to the bit), 2 ms.
def _packed(levels: dict[str, Any]) -> dict[str, Any]:
    energies = levels.get("energies")
    if not isinstance(energies, list):
        return levels
    raw = np.asarray(energies, dtype="<f8").tobytes()
    return {**levels, "energies": base64.b64encode(raw).decode("ascii")}


def _unpacked(levels: dict[str, Any]) -> dict[str, Any]:
    """``_packed`` undone; energies that do not decode are left out (the stem is then
    measured again rather than scaled: ``CachedSum.known_levels``)."""
    energies = levels.get("energies")
    if not isinstance(energies, str):
        return levels
    try:
        raw = base64.b64decode(energies.encode("ascii"), validate=True)
        values = np.frombuffer(raw, dtype="<f8").tolist()
    except (ValueError, UnicodeEncodeError):
        return {k: v for k, v in levels.items() if k != "energies"}
    return {**levels, "energies": values}


class _Replaced:
    """An earlier stem file that this render replaces (or removes), read once from start to
    end: what has been read of it is dropped from the page cache as the reading goes
    (``audio_io.forget_cached``), for the new stem's and mix's pages to reuse."""

    STEP = 8 << 20  # bytes dropped at a time
    MARGIN = 4 << 20  # bytes left behind the reading position (the decoder reads ahead)

    def __init__(self, f: Any, fd: int, linear: bool) -> None:
        # ``fd``: open on the file ``f`` reads, not its name, which the new stem may take
        # (renamed onto it) before the reading ends: an edit reads the rest of the earlier
        # stem after its new one is written when the new one ends in silence
        self._f, self._fd = f, fd
        self._bytes, self._frames = os.fstat(fd).st_size, max(1, f.frames)
        self._read = self._dropped = 0
        # ``linear``: its bytes go as its frames (WAV). A FLAC file's do not (silence takes
        # next to nothing): where it was read is not known, and it is dropped once read
        # (``done``), not behind the reading: pages dropped ahead of it are read again from
        # the disk (half of a 33 MB stem whose first half is silent)
        self._linear = linear

    def read(self, n: int) -> np.ndarray:
        chunk: np.ndarray = self._f.read(n)
        self._read += chunk.shape[1]
        upto = self._bytes * self._read // self._frames - self.MARGIN
        if self._linear and upto >= self._dropped + self.STEP:
            forget_cached(self._fd, upto)
            self._dropped = upto
        return chunk

    def done(self) -> None:
        """The reading has ended: a file not dropped as it was read is dropped whole."""
        if not self._linear:
            forget_cached(self._fd)


@contextlib.contextmanager
def open_stem(path: Path, out: Output, replaced: bool = False) -> Iterator[Any]:
    """An earlier stem file, open for reading (it stays readable when a new one replaces it).
    ``replaced``: the render replaces or removes it, and reads it once, in order: its pages
    are dropped from the cache behind the reading (``_Replaced``).

    Raises:
        RenderError: it is not of the mix's shape.
    """
    from pedalboard.io import AudioFile

    with AudioFile(str(path)) as f:
        if f.num_channels != out.channels or f.frames != out.frames:
            raise RenderError(f"{path} is {f.num_channels} x {f.frames} frames, not "
                              f"{out.channels} x {out.frames}; render with --force")
        if not replaced or not hasattr(os, "posix_fadvise"):  # nothing to drop (macOS)
            yield f
            return
        fd = os.open(path, os.O_RDONLY)  # the file ``f`` reads, whatever takes its name
        try:
            replaced_file = _Replaced(f, fd, path.suffix.lower() == ".wav")
            yield replaced_file
            replaced_file.done()
        finally:
            os.close(fd)


def _read_exact(f: Any, n: int, start: int, frames: int) -> np.ndarray:
    """The next ``n`` frames of the open stem file ``f`` (frame ``start`` of ``frames``)."""
    chunk = f.read(n)
    if chunk.shape[1] != n:
        raise RenderError(f"an earlier stem ends at frame {start + chunk.shape[1]} of "
                          f"{frames}; render with --force")
    return chunk


def subtract(mix: Bus, olds: list[Any]) -> None:
    """Subtract the earlier stem files ``olds`` (open, at their start) from the sum."""
    for start, block in mix.blocks(BLOCK):
        for f in olds:
            block -= _read_exact(f, block.shape[1], start, mix.frames)
        mix.write(start, block)


def _measure_as_written(bus: Bus, sample_rate: int, written: Any, conn: Any, parent: int,
                        peak: bool, peak_floor: float = 0.0,
                        rows: range | None = None) -> None:
    """A measuring process's work: read the sum on disk as ``written`` (frames, shared) says it
    is complete, and measure the loudness and sample peak of its channels ``rows`` (all), or
    (``peak``) its true peak from a running peak (or ``peak_floor``, a level the sum is known
    to reach); send the finished meter (or the error's line) down ``conn``."""
    from ..mixer.workers import _die_with_parent

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the render's to handle: it kills us
    try:
        meter = Meter(sample_rate, bus.channels, interpolator=LIMITER_DETECTOR,
                      loudness=False, peak_floor=peak_floor) if peak else \
            Meter(sample_rate, bus.channels if rows is None else len(rows), true_peak=False)
        pos = 0
        while pos < bus.frames:
            ready = written.value
            if ready <= pos:
                time.sleep(0.002)
                continue
            for start in range(pos, ready, BLOCK):
                meter.add(bus.read(start, min(BLOCK, ready - start), rows))
            pos = ready
        conn.send(meter.finish())
    except BaseException as e:  # noqa: BLE001  (told to the render, which raises it)
        conn.send(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


class _SecondProcess:
    """The sum measured by other processes as the pass writes it: its true peak in one, its
    loudness in another, or for two channels or more, in two (each K-weights half of the
    channels: the filters are the loudness's whole cost, 0.35 s for ten minutes of stereo, and
    one process for both finished 0.1-0.25 s after the pass and the true peak, the render
    waiting on it). The work of measuring (more than the pass's) then runs beside the pass, not
    under the one interpreter lock a thread of this process would share. For a sum on disk
    (``Bus`` on a file), on Linux, where they start by ``fork`` and read the file as it is
    written."""

    def __init__(self, bus: Bus, sample_rate: int, peak_floor: float = 0.0) -> None:
        ctx = mp.get_context("fork")
        self._written = ctx.RawValue("q", 0)
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        half = (bus.channels + 1) // 2
        jobs: list[tuple[bool, range | None]] = [(True, None)]  # the true peak
        jobs += [(False, range(0, half)), (False, range(half, bus.channels))] \
            if bus.channels > 1 else [(False, None)]
        for peak, rows in jobs:
            conn, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_measure_as_written, daemon=True, args=(
                bus, sample_rate, self._written, child, os.getpid(), peak, peak_floor, rows))
            self._conns.append(conn)
            self._procs.append(proc)
            proc.start()
            child.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def written(self, frames: int) -> None:
        self._written.value = frames

    def result(self) -> SumLevels:
        try:
            got = [conn.recv() for conn in self._conns]
        except EOFError:
            raise RenderError("a process measuring the mix died (out of memory?)") from None
        finally:
            self.close()
        for g in got:
            if isinstance(g, str):
                raise RenderError(f"measuring the mix failed: {g}")
        peaks, *loudness = got
        return SumLevels(loudness[0] if len(loudness) == 1 else Meter.of_channels(loudness),
                         peaks.true_peak_db)

    def close(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for conn in self._conns:
            conn.close()


class Update:
    """The cached sum updated in the pass that renders the one stem that changed: each stretch
    of the sum is read once, the earlier files ``olds`` subtracted, the new stem's blocks
    (given to ``add`` in time order, as the stem stage gives them) and the kept files ``adds``
    added, written back and measured for the master as the pass goes (unless not
    ``measure``: master effects, whose output the master measures): by two other processes
    where the sum is on disk (Linux), else its loudness on ``pool``'s thread and its true peak
    after the pass, from the sample peak up (read as the sum goes, from a running peak that
    starts at zero, on a thread of this process, it slowed the pass more than it saved).
    Where the new stem is silent (``add`` is not called), the sum is updated all the same.
    ``finish`` completes the sum and returns ``master.measure_sum``'s figures. Use as a
    context manager, or call ``close``: a failed pass stops the measuring processes.

    The order of the additions is ``subtract`` then the stem stage then ``add_stem_file``'s,
    so the sum is the same, to the bit, as those three passes would leave it.
    """

    def __init__(self, bus: Bus, olds: list[Any], adds: list[Any], sample_rate: int,
                 pool: ThreadPoolExecutor, peak_floor: float = 0.0,
                 measure: bool = True) -> None:
        self.bus, self.channels, self.frames = bus, bus.channels, bus.frames
        self._olds, self._adds, self._pool = olds, adds, pool
        self._done = 0  # frames of the sum updated so far
        self._sample_rate = sample_rate
        # a daemonic process (a script's multiprocessing.Pool worker) may not start children
        self._second = _SecondProcess(bus, sample_rate, peak_floor) \
            if measure and not bus.in_memory and sys.platform == "linux" \
            and not mp.current_process().daemon else None
        self._loudness = Meter(sample_rate, bus.channels, true_peak=False) \
            if measure and self._second is None else None
        self._pending: Future[None] | None = None

    def add(self, start: int, block: np.ndarray) -> None:
        if start < self._done:
            raise ValueError(f"the sum is updated in time order: frame {start} is behind "
                             f"{self._done}")
        self._advance(start)
        self._step(start, block.shape[1], block)

    def _advance(self, to: int) -> None:
        while self._done < to:
            self._step(self._done, min(BLOCK, to - self._done), None)

    def _step(self, start: int, n: int, block: np.ndarray | None) -> None:
        n = min(n, self.frames - start)
        if n <= 0:
            return
        now = self.bus.read(start, n)
        for f in self._olds:
            now -= _read_exact(f, n, start, self.frames)
        if block is not None:
            now += block[:, :n]
        for f in self._adds:
            now += _read_exact(f, n, start, self.frames)
        self.bus.write(start, now)
        self._done = start + n
        if self._second is not None:
            self._second.written(self._done)
            return
        if self._loudness is None:
            return
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._loudness.add, now)

    def complete(self) -> None:
        """Update the rest of the sum: the earlier files are then read to their ends."""
        self._advance(self.frames)

    def finish(self) -> SumLevels | None:
        """Update the rest of the sum; its loudness and true peak (None: not ``measure``)."""
        self.complete()
        if self._second is not None:
            return self._second.result()
        if self._loudness is None:
            return None
        if self._pending is not None:
            self._pending.result()
        loudness = self._loudness.finish()
        return SumLevels(loudness, sum_true_peak_db(self.bus, self._sample_rate,
                                                    loudness.sample_peak))

    def close(self) -> None:
        if self._second is not None:
            self._second.close()

    def __enter__(self) -> Update:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
