"""Takes stage, run: the requests missing from the take store -> generated takes in the store.

Input: ``TakeRequest`` values, the store, the command's ``Models`` and the generation settings.
Output: every request in the store; torch and an engine's libraries (audiocraft, diffusers) are
imported only when something is missing, and only for the engines that have work.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .. import locks
from ..generate import TakeRequest
from ..generate.models import ModelRef
from ..notices import RenderWarning
from ..options import GenerationOptions
from .plan import Models
from .store import TakeCache

if TYPE_CHECKING:
    from ..generate.engines import Engine


def generate_missing(requests: Iterable[TakeRequest], cache: TakeCache, models: Models,
                     options: GenerationOptions) -> tuple[set[str], list[RenderWarning]]:
    """Generate the requests whose keys are not cached, storing each batch as it finishes.

    A key is generated only under its cache lock: keys another render is generating are waited
    for and then read from the cache (or generated here, if that render died first), so two
    renders at once never generate one take twice. Requests go to the engine of their model
    (one scene may mix engines); each engine loads once. Before generating, logs how long it
    will take from this machine's measured cost for that engine, weights and precision
    (measured with a short probe the first time, then remembered). Returns the keys generated
    now and the warnings of the cache and the engines. With ``options.cluster`` the takes are
    generated on that Ray cluster instead (``takes.cluster``), under the same locks.
    """
    pending: dict[str, TakeRequest] = {}
    for r in requests:
        if r.key not in pending and not cache.has(r.key):
            pending[r.key] = r
    done: set[str] = set()
    engines: dict[str, Engine] = {}
    while pending:
        held: dict[str, int] = {}
        try:
            for key in list(pending):
                fd = cache.try_lock(key)
                if fd is None:
                    continue
                if cache.has(key):  # finished by another render since we looked
                    locks.unlock(fd)
                    del pending[key]
                else:
                    held[key] = fd
            by_model: dict[str, list[TakeRequest]] = {}
            for k in list(held):
                r = pending.pop(k)
                by_model.setdefault(r.model, []).append(r)
            for identity, mine in by_model.items():
                ref = models.by_identity[identity]
                if options.cluster is not None:
                    from .cluster.job import generate_on_cluster

                    generate_on_cluster(held, mine, cache, ref, options, done)
                    continue
                gen = engines.get(identity)
                if gen is None:
                    gen = engines[identity] = _generator(ref, mine[0].revision, options, mine)
                else:
                    options.log(_cost_line(gen, ref, mine[0].revision, mine))
                gen.generate(mine, on_batch=functools.partial(_store, cache, gen, held, done))
        finally:
            for fd in held.values():
                locks.unlock(fd)
        for key in list(pending):  # held by other renders: wait for them, then look again
            locks.unlock(cache.wait_lock(key))
            if cache.has(key):
                del pending[key]
    notes = [n for g in engines.values() for n in g.notes]
    warnings = [RenderWarning("cache", p) for p in cache.problems]
    cache.problems.clear()
    return done, warnings + [RenderWarning("generate", note) for note in notes]


def _store(cache: TakeCache, gen: Engine, held: dict[str, int], done: set[str],
           reqs: list[TakeRequest], audio: list[np.ndarray], seconds: float) -> None:
    """Store one finished batch and release its keys' locks (a waiting render reads them)."""
    for r, a in zip(reqs, audio, strict=True):
        cache.put(r, a, gen.sample_rate, seconds / len(reqs),
                  generator={"device": gen.device, "precision": gen.precision})
        done.add(r.key)
        locks.unlock(held.pop(r.key))


def cost_model(ref: ModelRef, revision: str) -> str:
    """What a measured cost is remembered by: the engine and the exact weights, so a
    replica's speed is never reported as the real model's. A local folder's identity is the
    hash of its files and pins both already."""
    if ref.local_dir is not None:
        return ref.identity
    return f"{ref.engine}|{ref.identity}|{revision}"


def _cost_line(gen: Engine, ref: ModelRef, revision: str, reqs: list[TakeRequest]) -> str:
    """What generating ``reqs`` costs here, from this machine's measured figure (measured
    with a short probe take the first time, then remembered per machine, engine, weights and
    precision)."""
    from ..generate.cost import cached_cost, cost_line, store_cost

    key = cost_model(ref, revision)
    cost = cached_cost(key, gen.device, gen.precision)
    if cost is None:
        cost = gen.measure_cost()
        store_cost(key, gen.device, gen.precision, cost)
    return cost_line(len(reqs), sum(r.duration_s for r in reqs), gen.device, gen.precision,
                     cost, gen.spec.title)


def _generator(ref: ModelRef, revision: str, options: GenerationOptions,
               first: list[TakeRequest]) -> Engine:
    """Load the engine (the heavy import happens only now) and say what ``first`` will cost;
    a figure measured before is said before the model loads."""
    from ..generate.models import locate

    log = options.log
    locate(ref, log=log)  # fail fast (or download), before the slow import
    from ..generate.cost import cached_cost, cost_line
    from ..generate.factory import open_engine, pick_device
    from ..generate.precision import choose_precision

    dev = pick_device(options.device)
    prec = choose_precision(options.precision, dev)
    cost = cached_cost(cost_model(ref, revision), dev, prec)
    if cost is not None:
        log(cost_line(len(first), sum(r.duration_s for r in first), dev, prec, cost,
                      ref.spec.title))
    gen = open_engine(ref, dev, max_batch=options.max_batch, progress=options.progress,
                      log=log, precision=prec)
    if cost is None:
        log(_cost_line(gen, ref, revision, first))
    return gen
