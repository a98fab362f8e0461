"""Takes stage, cluster: what runs on a worker: one loaded model on one device, fed batches.

Input: batches of ``TakeRequest`` values (equal settings, at most ``max_batch``). Output: per
take either its audio (float32 ``(1, frames)``, back through Ray's object store) or, when the
worker sees the command's take store, the take written there atomically and only its key
returned. Runs in a Ray actor process; imports torch and the engine when the actor starts.

The engine seam is ``build_engine``: everything here talks to the engine through it and through
``Engine``'s three attributes and ``generate``, so any engine the factory can build runs on a
cluster unchanged.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...generate import TakeRequest
from ...generate.models import ModelRef


class Engine(Protocol):
    """The narrow interface a cluster worker needs from an engine."""

    device: str
    precision: str

    @property
    def sample_rate(self) -> int: ...

    def generate(self, requests: list[TakeRequest]) -> list[np.ndarray]: ...


def build_engine(ref: ModelRef, device: str, precision: str, max_batch: int) -> Engine:
    """The engine for ``ref`` on ``device`` at ``precision``: the one seam between the cluster
    and the engines (the same ``Generator`` a local run builds, so the same bits)."""
    from ...generate.audiogen import Generator
    from ...generate.models import locate

    locate(ref)
    return Generator(ref, device, max_batch=max_batch, precision=precision)


class TakeWorker:
    """A Ray actor's state: the model, loaded once when the actor starts, and where it runs.

    Wrapped with ``ray.remote`` by the job (so importing this module never imports Ray).
    """

    def __init__(self, ref: ModelRef, device: str, precision: str, max_batch: int) -> None:
        import ray

        self.engine = build_engine(ref, device, precision, max_batch)
        self.info: dict[str, Any] = {
            "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()[:12],
            "pid": os.getpid(), "device": self.engine.device,
            "precision": self.engine.precision, "sample_rate": self.engine.sample_rate}

    def where(self) -> dict[str, Any]:
        """Host, Ray node, process id, device, precision and sample rate of this worker."""
        return self.info

    def made_with(self) -> dict[str, str]:
        """How and where a take was made, as its sidecar records it."""
        return {k: str(self.info[k]) for k in ("device", "precision", "host", "node")}

    def probe(self, root: str, name: str) -> bool:
        """Write ``root/name`` holding ``name`` if ``root`` exists here (never create it: a
        folder made on a worker's own disk is not the command's store)."""
        folder = Path(root)
        if not folder.is_dir():
            return False
        try:
            (folder / name).write_text(name, encoding="utf-8")
        except OSError:
            return False
        return True

    def generate(self, requests: list[TakeRequest], store: str | None) -> list[dict[str, Any]]:
        """Generate one batch. ``store``: the take store's root when this worker shares it
        (each take is written there and only its key returned), else None (the audio comes
        back). Per take: ``key``, ``seconds`` of generation and maybe ``audio``."""
        t0 = time.perf_counter()
        takes = self.engine.generate(requests)
        seconds = (time.perf_counter() - t0) / max(1, len(requests))
        out: list[dict[str, Any]] = []
        if store is not None:
            from ..store import TakeCache

            cache = TakeCache(store)
            for r, audio in zip(requests, takes, strict=True):
                cache.put(r, audio, self.engine.sample_rate, seconds, generator=self.made_with())
                out.append({"key": r.key, "seconds": seconds})
        else:
            out = [{"key": r.key, "seconds": seconds, "audio": audio}
                   for r, audio in zip(requests, takes, strict=True)]
        return out
