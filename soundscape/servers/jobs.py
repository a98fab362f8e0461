"""Servers, jobs: long service calls (render, audition, SFX) run in threads, observable and
cancellable.

Input: a service call that takes ``events`` and ``cancel``. Output: a ``Job`` holding the events it
reported so far (progress, log, then exactly one of done / error / cancelled), its result or its
error lines. Cancelling sets the call's cancel event: the call stops at its next progress or log
report the way Ctrl-C stops a render (finished takes cached, nothing half-written).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SoundscapeError
from .service import Cancelled

MAX_EVENTS = 10_000  # progress of a long job is thinned beyond this
KEEP_FINISHED = 100


@dataclass
class Job:
    id: str
    kind: str
    args: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    events: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"  # running, done, error, cancelled
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, event: dict[str, Any]) -> None:
        with self.changed:
            if len(self.events) < MAX_EVENTS or event["type"] != "progress":
                self.events.append({"seq": len(self.events), "time": round(time.time(), 3),
                                    **event})
            self.changed.notify_all()

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "args": self.args, "state": self.state,
                "error": self.error, "result": self.result, "events": len(self.events),
                "started": self.started, "finished": self.finished}


class Jobs:
    """The jobs of one server."""

    def __init__(self, error_lines: Callable[[BaseException], str]) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._error_lines = error_lines

    def start(self, kind: str, args: dict[str, Any], call: Callable[..., Any]) -> Job:
        """Run ``call(events=..., cancel=...)`` in a new thread as a job."""
        job = Job(f"{next(self._ids)}", kind, args)
        with self._lock:
            done = [j for j in self._jobs.values() if j.state != "running"]
            for old in done[:max(0, len(done) - KEEP_FINISHED)]:
                del self._jobs[old.id]
            self._jobs[job.id] = job

        def work() -> None:
            try:
                job.result = call(events=job.add, cancel=job.cancel)
                state, end = "done", {"type": "done", "result": job.result}
            except Cancelled as e:
                job.error = f"Error: {e}"
                state, end = "cancelled", {"type": "cancelled", "error": job.error}
            except Exception as e:  # a job's failure is reported, never raised into the server
                job.error = self._error_lines(e)
                state, end = "error", {"type": "error", "error": job.error}
            job.finished = time.time()
            job.state = state
            job.add(end)

        threading.Thread(target=work, name=f"soundscape-job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise SoundscapeError(f"no job {job_id}")
        job.cancel.set()
        return job

    def wait_all(self, timeout_s: float) -> None:
        """Cancel every running job and wait for them to stop (server shutdown)."""
        for j in self.all():
            j.cancel.set()
        end = time.monotonic() + timeout_s
        for j in self.all():
            with j.changed:
                while j.state == "running" and time.monotonic() < end:
                    j.changed.wait(0.1)
