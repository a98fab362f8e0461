"""Takes stage, cluster: the driver's side of a job: locked requests -> takes in the store.

Input: the requests this command holds the store locks of, the store, a ``Connection`` and the
generation settings. Output: every request stored (or reported as failing, one line per take),
the keys generated, and a progress bar over the job (takes done of total, takes per minute,
actors alive).

Why Ray core actors rather than Ray Data's ``map_batches`` with an actor pool: a job is a few
thousand small requests, not a dataset; what matters is what happens to each take. With actors
the driver knows which batch each actor holds, so when one dies only that batch's unfinished
takes go back in the queue (for the next free actor), a take that fails on its own is reported
and the rest go on, finished takes are stored the moment their batch returns (a killed job keeps
them), and the store's locks stay with the command that took them. Ray Data would retry or fail
whole blocks out of sight and would need the results collected before any is stored.

Where takes go: every actor is asked to write a probe file into the store's folder; when the
driver then sees it, that actor shares the store (one machine, or a shared file system) and
writes takes into it itself (atomically, under the locks the driver holds), returning only keys,
which the driver checks by reading them back. Otherwise the audio comes back through the object
store and the driver writes it. Either way the files are the ones a local run writes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ... import locks
from ...errors import GeneratorError
from ...generate import TakeRequest
from ...generate.models import ModelRef
from ...options import ClusterSpec, GenerationOptions, Log, Progress
from ..store import TakeCache
from . import ClusterError
from .connect import Connection, connect
from .worker import TakeWorker

MAX_ATTEMPTS = 3  # a take whose worker died this often is reported, not retried again
WAIT_S = 1.0  # how often the progress bar and the actors' health are looked at


@dataclass
class _Actor:
    handle: Any
    starting: Any  # the ref of its ``where`` call until the model has loaded
    info: dict[str, Any] = field(default_factory=dict)
    shared: bool | None = None  # sees the store's folder (None: not probed yet)
    busy: Any = None  # the ref of the batch it generates
    batch: list[TakeRequest] = field(default_factory=list)


class Pool:
    """Ray actors, each with one loaded model on one device (a GPU where the cluster has them).

    Actors reserve one GPU each, or one CPU each (torch then runs one thread per actor, as Ray
    sets ``OMP_NUM_THREADS`` from the reservation): a CPU's cores are used by more actors,
    not by threads that hand work to each other.
    """

    def __init__(self, conn: Connection, ref: ModelRef, device: str, precision: str,
                 max_batch: int, gpus: bool) -> None:
        self.ray = conn.ray
        options: dict[str, Any] = {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}
        if gpus:
            options["num_gpus"] = 1
        self.remote = self.ray.remote(TakeWorker).options(**options)
        self.args = (ref, "cuda" if gpus and device == "auto" else device, precision, max_batch)
        self.actors: list[_Actor] = []

    def grow(self, n: int) -> None:
        """Start actors until ``n`` are alive or starting."""
        while len(self.actors) < n:
            handle = self.remote.remote(*self.args)
            self.actors.append(_Actor(handle, handle.where.remote()))

    def drop(self, actor: _Actor) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor.handle, no_restart=True)
        if actor in self.actors:
            self.actors.remove(actor)

    def close(self) -> None:
        for a in list(self.actors):
            self.drop(a)

    def pids(self) -> list[tuple[int, bool]]:
        """``(pid, busy)`` of every ready actor (for tests that kill one mid-batch)."""
        return [(int(a.info["pid"]), a.busy is not None) for a in self.actors if a.info]


@dataclass
class _Session:
    conn: Connection
    pools: dict[tuple, Pool] = field(default_factory=dict)

    def close(self) -> None:
        for p in self.pools.values():
            p.close()
        self.pools.clear()
        self.conn.close()


_session: _Session | None = None


def session(spec: ClusterSpec, log: Log) -> _Session:
    """This process's connection to the cluster (made once; later jobs reuse its actors)."""
    global _session
    if _session is None or not _session.conn.ray.is_initialized():
        _session = _Session(connect(spec, log))
        import atexit

        atexit.register(close_session)
    return _session


def close_session() -> None:
    """Stop this process's actors and disconnect (a joined cluster keeps running)."""
    global _session
    if _session is not None:
        with contextlib.suppress(Exception):
            _session.close()
        _session = None


def current_pools() -> list[Pool]:
    return [] if _session is None else list(_session.pools.values())


def batches(requests: list[TakeRequest], max_batch: int) -> list[list[TakeRequest]]:
    """Requests grouped as a local run groups them: equal settings, at most ``max_batch`` per
    batch, in request order. (The engine splits a batch further by prompt shape; a take does
    not depend on its batch-mates, so any grouping gives the same bits.)"""
    groups: dict[tuple, list[TakeRequest]] = {}
    for r in requests:
        groups.setdefault(r.batch_key(), []).append(r)
    return [g[i:i + max_batch] for g in groups.values() for i in range(0, len(g), max_batch)]


class Job:
    """One job: generate ``held`` (whose locks this process holds) on the pool."""

    def __init__(self, pool: Pool, cache: TakeCache, held: dict[str, int], done: set[str],
                 log: Log, progress: Progress | None) -> None:
        self.pool, self.ray, self.cache = pool, pool.ray, cache
        self.held, self.done, self.log, self.progress = held, done, log, progress
        self.failed: list[str] = []
        self.attempts: dict[str, int] = {}
        self.total = 0
        self.finished = 0
        self.t0 = time.monotonic()
        self.replacements = 0
        self.said: set[str] = set()
        for a in pool.actors:  # a reused pool: this job's store may be another folder
            a.shared = None

    def run(self, requests: list[TakeRequest], max_batch: int, actors: int) -> None:
        queue = deque(batches(requests, max_batch))
        self.total = len(requests)
        self.pool.grow(min(actors, len(queue)))
        self.replacements = 2 * actors
        try:
            self._loop(queue)
        except BaseException:
            # Ctrl-C or a failure: stop the actors, so none writes after our locks are let go
            # (their writes are atomic anyway); the cluster itself keeps running.
            self.pool.close()
            raise
        finally:
            self._show()

    def _loop(self, queue: deque[list[TakeRequest]]) -> None:
        while queue or any(a.busy is not None for a in self.pool.actors):
            for a in self.pool.actors:
                if queue and a.busy is None and a.info:
                    if a.shared is None:
                        a.shared = self._probe(a)
                        self._say_where(a)
                    a.batch = queue.popleft()
                    a.busy = a.handle.generate.remote(
                        a.batch, str(self.cache.root) if a.shared else None)
            waiting = {a.busy or a.starting: a for a in self.pool.actors
                       if a.busy is not None or not a.info}
            if not waiting:
                if not self.pool.actors:
                    raise ClusterError(f"every worker died; {len(self.held)} take(s) are left "
                                       f"(those finished are cached); run the command again")
                continue
            ready, _ = self.ray.wait(list(waiting), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                a = waiting[ref]
                if a.busy is ref:
                    self._returned(a, queue)
                else:
                    self._started(a)
            self._show()

    def _started(self, a: _Actor) -> None:
        try:
            a.info = self.ray.get(a.starting)
        except Exception as e:  # the model did not load there: that will not fix itself
            self.pool.drop(a)
            if not self.pool.actors:
                raise ClusterError(f"no worker could load the model: {_cause(e)}") from None
            self.log(f"warning: a cluster worker could not load the model ({_cause(e)})")

    def _probe(self, a: _Actor) -> bool:
        name = f".cluster-probe-{uuid.uuid4().hex}"
        root = self.cache.root
        root.mkdir(parents=True, exist_ok=True)
        try:
            wrote = bool(self.ray.get(a.handle.probe.remote(str(root), name)))
            return wrote and sees_probe(root / name, name)
        finally:
            with contextlib.suppress(OSError):
                (root / name).unlink()

    def _say_where(self, a: _Actor) -> None:
        line = (f"cluster: workers on {a.info['host']} write takes into the take store" if a.shared
                else f"cluster: workers on {a.info['host']} do not see the take store; their "
                     f"takes come back through Ray's object store")
        if line not in self.said:
            self.said.add(line)
            self.log(line)

    def _returned(self, a: _Actor, queue: deque[list[TakeRequest]]) -> None:
        ref, batch = a.busy, a.batch
        a.busy, a.batch = None, []
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # the engine or a write raised there
            left = [r for r in batch if not (a.shared and self._stored(r))]
            if len(left) > 1:  # find the take that fails: each alone, at the front
                queue.extendleft([r] for r in reversed(left))
            elif left:
                self._fail(left[0], f"failed on {a.info.get('host', '?')}: {_cause(e)}")
            return
        except Exception as e:  # the actor, its process or its node died: retry elsewhere
            self._lost(a, batch, queue, e)
            return
        for r, got in zip(batch, out, strict=True):
            if "audio" in got:
                try:
                    self.cache.put(r, got["audio"], int(a.info["sample_rate"]), got["seconds"],
                                   generator={k: str(a.info[k])
                                              for k in ("device", "precision", "host", "node")})
                except OSError as e:
                    self._fail(r, f"could not be stored here: {e}")
                    continue
            elif not self.cache.has(r.key):  # written where this process cannot read it
                a.shared = False
                queue.appendleft([r])
                continue
            self._finish(r)

    def _lost(self, a: _Actor, batch: list[TakeRequest], queue: deque[list[TakeRequest]],
              error: Exception) -> None:
        """An actor died mid-batch: keep what it stored, queue the rest for another actor."""
        self.pool.drop(a)
        again = []
        for r in batch:
            if a.shared and self._stored(r):
                continue
            self.attempts[r.key] = self.attempts.get(r.key, 0) + 1
            if self.attempts[r.key] >= MAX_ATTEMPTS:
                self._fail(r, f"its worker died {MAX_ATTEMPTS} times ({_cause(error)})")
            else:
                again.append(r)
        if again:
            queue.appendleft(again)
            self.log(f"cluster: a worker on {a.info.get('host', '?')} died "
                     f"({type(error).__name__}); {len(again)} unfinished take(s) go to another")
        if self.replacements > 0 and (queue or len(self.pool.actors) == 0):
            self.replacements -= 1
            self.pool.grow(len(self.pool.actors) + 1)

    def _stored(self, r: TakeRequest) -> bool:
        """Whether a sharing worker stored ``r`` before its batch failed (then it is done)."""
        if self.cache.has(r.key):
            self._finish(r)
            return True
        return False

    def _finish(self, r: TakeRequest) -> None:
        self.done.add(r.key)
        self.finished += 1
        fd = self.held.pop(r.key, None)
        if fd is not None:
            locks.unlock(fd)  # a render waiting for this take reads it now

    def _fail(self, r: TakeRequest, why: str) -> None:
        self.failed.append(f"take {r.key[:12]} ({r.prompt!r}, seed {r.seed}) {why}")
        fd = self.held.pop(r.key, None)
        if fd is not None:
            locks.unlock(fd)

    def _show(self) -> None:
        if self.progress is None:
            return
        minutes = (time.monotonic() - self.t0) / 60
        rate = self.finished / minutes if minutes > 0 else 0.0
        alive = sum(1 for a in self.pool.actors if a.info)
        self.progress(f"takes on the cluster ({alive} actors alive, {rate:.1f} takes/min)",
                      self.finished + len(self.failed), self.total)


def sees_probe(path: Any, name: str) -> bool:
    """Whether this process reads the probe file a worker wrote (so they share the folder)."""
    try:
        return bool(path.read_text(encoding="utf-8") == name)
    except OSError:
        return False


def _cause(error: BaseException) -> str:
    """The first line of what went wrong on the worker (Ray wraps it in a traceback)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException) and str(cause).strip():
        return str(cause).strip().splitlines()[0]
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error:" in ln and not ln.startswith("File ")]
    return (named[-1] if named else lines[-1] if lines else type(error).__name__)[:300]


def default_actors(conn: Connection, device: str) -> tuple[int, bool]:
    """How many actors and whether they take GPUs: one per GPU where the cluster has GPUs (and
    the device allows them), else one per CPU but one, leaving a core for Ray itself."""
    res = conn.resources()
    gpus = int(res.get("GPU", 0))
    if gpus and device in ("auto", "cuda"):
        return gpus, True
    return max(1, int(res.get("CPU", 1)) - 1), False


def generate_on_cluster(held: dict[str, int], requests: list[TakeRequest], cache: TakeCache,
                        ref: ModelRef, options: GenerationOptions, done: set[str]) -> None:
    """Generate ``requests`` (whose store locks ``held`` maps key -> descriptor) on
    ``options.cluster``, with ``options``' device, batch size, precision, log and progress.

    Each lock is let go as its take is stored; ``done`` gains the keys generated. Raises
    ``GeneratorError`` with one line per take that failed for a reason a retry cannot fix,
    after every other take has finished.
    """
    spec, log = options.cluster, options.log
    assert spec is not None
    s = session(spec, log)
    actors, gpus = default_actors(s.conn, options.device)
    if spec.actors is not None:
        actors = spec.actors
    key = (ref.identity, options.device, options.precision, options.max_batch, gpus)
    pool = s.pools.get(key)
    if pool is None:
        pool = s.pools[key] = Pool(s.conn, ref, options.device, options.precision,
                                   options.max_batch, gpus)
    job = Job(pool, cache, held, done, log, options.progress)
    n_batches = len(batches(requests, options.max_batch))
    log(f"cluster: {len(requests)} take(s) in {n_batches} batch(es) on "
        f"{min(actors, n_batches)} actor(s) ({'one GPU' if gpus else 'one CPU'} each)")
    job.run(requests, options.max_batch, actors)
    if job.failed:
        raise GeneratorError("\n".join(job.failed + [
            f"{len(job.failed)} of {job.total} take(s) failed; the others are cached"]))
