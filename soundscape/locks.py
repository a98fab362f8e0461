"""Concurrency: advisory locks that die with their holder, and leftovers of dead processes.

Input: paths (an output folder, a cache entry's lock file) and process ids. Output: held locks
and answers to "is the process that wrote this still running?".

Locks are ``fcntl.flock`` locks: the kernel releases them when the holding process exits, however
it exits (``kill -9`` included), so a killed render never leaves a lock behind. Lock files are
never removed (removing one while another process waits on it would let a third lock a new file
of the same name). Where ``fcntl`` is missing (Windows) locking is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (any user's); a zombie is dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    try:  # a killed process whose parent has not reaped it (PID 1 in a container may never)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): signal 0 reached it
    return state not in ("Z", "X")


def _open(path: Path) -> int:
    if path.is_dir():
        return os.open(path, os.O_RDONLY)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def try_lock(path: str | Path) -> int | None:
    """Take the exclusive lock on ``path`` (a folder, or a lock file created if missing) without
    waiting: the open descriptor holding it, or None when another process holds it."""
    fd = _open(Path(path))
    if fcntl is None:  # pragma: no cover - Windows
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock(path: str | Path) -> int:
    """Take the exclusive lock on ``path``, waiting for its holder to release it or die."""
    fd = _open(Path(path))
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken by ``lock`` or ``try_lock`` (closing the descriptor releases it)."""
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the ``with`` block."""
    fd = lock(path)
    try:
        yield
    finally:
        unlock(fd)
