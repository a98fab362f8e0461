"""Takes stage, run: the requests missing from the take store -> generated takes in the store.

Input: ``TakeRequest`` values, the store and the generation settings. Output: every request in the
store; torch and the engines are imported only when something is missing.
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
from .store import TakeCache

if TYPE_CHECKING:
    from ..generate.audiogen import Generator


def generate_missing(requests: Iterable[TakeRequest], cache: TakeCache, ref: ModelRef,
                     options: GenerationOptions) -> tuple[set[str], list[RenderWarning]]:
    """Generate the requests whose keys are not cached, storing each batch as it finishes.

    A key is generated only under its cache lock: keys another render is generating are waited
    for and then read from the cache (or generated here, if that render died first), so two
    renders at once never generate one take twice. Before generating, logs how long it will
    take from this machine's measured cost at the chosen precision (measured with a short probe
    the first time, then remembered). Returns the keys generated now and the warnings of the
    cache and the generator. With ``options.cluster`` the takes are generated on that Ray
    cluster instead (``takes.cluster``), under the same locks.
    """
    pending: dict[str, TakeRequest] = {}
    for r in requests:
        if r.key not in pending and not cache.has(r.key):
            pending[r.key] = r
    done: set[str] = set()
    notes: list[str] = []
    gen: Generator | None = None
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
            if held:
                mine = [pending.pop(k) for k in held]
                if options.cluster is not None:
                    from .cluster.job import generate_on_cluster

                    generate_on_cluster(held, mine, cache, ref, options, done)
                else:
                    if gen is None:
                        gen = _generator(ref, options, mine)
                    else:
                        options.log(_cost_line(gen, ref, mine))
                    gen.generate(mine,
                                 on_batch=functools.partial(_store, cache, gen, held, done))
        finally:
            for fd in held.values():
                locks.unlock(fd)
        for key in list(pending):  # held by other renders: wait for them, then look again
            locks.unlock(cache.wait_lock(key))
            if cache.has(key):
                del pending[key]
    if gen is not None:
        notes = gen.notes
    warnings = [RenderWarning("cache", p) for p in cache.problems]
    cache.problems.clear()
    return done, warnings + [RenderWarning("generate", note) for note in notes]


def _store(cache: TakeCache, gen: Generator, held: dict[str, int], done: set[str],
           reqs: list[TakeRequest], audio: list[np.ndarray], seconds: float) -> None:
    """Store one finished batch and release its keys' locks (a waiting render reads them)."""
    for r, a in zip(reqs, audio, strict=True):
        cache.put(r, a, gen.sample_rate, seconds / len(reqs),
                  generator={"device": gen.device, "precision": gen.precision})
        done.add(r.key)
        locks.unlock(held.pop(r.key))


def _cost_line(gen: Generator, ref: ModelRef, reqs: list[TakeRequest]) -> str:
    """What generating ``reqs`` costs here, from this machine's measured figure (measured
    with a short probe take the first time, then remembered per machine and model)."""
    from ..generate.cost import cached_cost, cost_line, store_cost

    cost = cached_cost(ref.identity, gen.device, gen.precision)
    if cost is None:
        cost = gen.measure_cost()
        store_cost(ref.identity, gen.device, gen.precision, cost)
    return cost_line(len(reqs), sum(r.duration_s for r in reqs), gen.device, gen.precision,
                     cost)


def _generator(ref: ModelRef, options: GenerationOptions, first: list[TakeRequest]) -> Generator:
    """Load the model (the heavy import happens only now) and say what ``first`` will cost;
    a figure measured before is said before the model loads."""
    from ..generate.models import locate

    log = options.log

    locate(ref, log=log)  # fail fast (or download), before the slow import
    from ..generate.audiogen import Generator, pick_device
    from ..generate.cost import cached_cost, cost_line
    from ..generate.precision import choose_precision

    dev = pick_device(options.device)
    prec = choose_precision(options.precision, dev)
    cost = cached_cost(ref.identity, dev, prec)
    if cost is not None:
        log(cost_line(len(first), sum(r.duration_s for r in first), dev, prec, cost))
    gen = Generator(ref, dev, max_batch=options.max_batch, progress=options.progress, log=log,
                    precision=prec)
    if cost is None:
        log(_cost_line(gen, ref, first))
    return gen
