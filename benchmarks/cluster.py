"""Takes on a Ray cluster: takes per minute with 1 and 2 actors, and the overhead per take.

    uv run --extra cluster python benchmarks/cluster.py [--takes 24] [--seconds 1]
                                                         [--max-batch 4] [--cpus 3]

Generates ``--takes`` takes of the tiny model (written here, loaded through the real loader)
three ways in one run, each into an empty take store and after a warm-up, so model loading and
actor start-up are not in the figures (they are printed apart, once): locally (the same
``Generator`` and store writes a local render does), then through ``--cluster`` on a local Ray
cluster with 1 actor and with 2. Every actor reserves one CPU and so runs torch on one thread;
the local run is given one thread too, so the difference is the cluster's own cost: scheduling,
the probe, the actors' store writes and the driver reading each take back. The last line is the
overhead per take against the local run and the 2-actor speed-up.

On a machine with fewer free cores than actors the 2-actor figure measures contention, not
scaling; the README's plan scales from the 1-actor figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from soundscape.generate import TakeRequest
from soundscape.generate.audiogen import Generator
from soundscape.generate.dev.tiny import write_tiny_model
from soundscape.generate.models import resolve
from soundscape.takes.cluster import ClusterSpec
from soundscape.takes.run import generate_missing
from soundscape.takes.store import TakeCache

p = argparse.ArgumentParser()
p.add_argument("--takes", type=int, default=24)
p.add_argument("--seconds", type=float, default=1.0)
p.add_argument("--max-batch", type=int, default=4)
p.add_argument("--cpus", type=int, default=3, help="CPUs the local Ray cluster offers")
args = p.parse_args()

torch.set_num_threads(1)
tmp = Path(tempfile.mkdtemp(prefix="soundscape-cluster-bench-"))
ref = resolve(str(write_tiny_model(tmp / "model")))


def requests(tag: str, n: int) -> list[TakeRequest]:
    return [TakeRequest(ref.identity, f"bench {tag}", args.seconds, 1.0, 250, 0.0, 3.0,
                        args.seconds, seed) for seed in range(n)]


# Local: a loaded generator, then what generate_missing does per batch (generate, then store).
t0 = time.perf_counter()
gen = Generator(ref, "cpu", max_batch=args.max_batch, precision="fp32")
load_s = time.perf_counter() - t0
gen.generate(requests("warm", 2))
cache = TakeCache(tmp / "local")
reqs = requests("local", args.takes)
t0 = time.perf_counter()
gen.generate(reqs, on_batch=lambda rs, audio, s: [cache.put(r, a, gen.sample_rate, s)
                                                  for r, a in zip(rs, audio, strict=True)])
local_s = time.perf_counter() - t0
print(f"local: {args.takes} takes of {args.seconds:g} s in {local_s:.2f} s = "
      f"{60 * args.takes / local_s:.1f} takes/min (model load {load_s:.2f} s, once)")

import ray  # noqa: E402  (the extra; imported only once the local figure is in)

t0 = time.perf_counter()
ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR",
         log_to_driver=False)
print(f"ray.init: {time.perf_counter() - t0:.2f} s (once per command)")
results = {}
for actors in (1, 2):
    spec = ClusterSpec("ray", actors=actors)
    t0 = time.perf_counter()  # warm-up: start the actors (import torch, load the model)
    generate_missing(requests(f"warm{actors}", 2 * actors * args.max_batch),
                     TakeCache(tmp / f"warm{actors}"), ref, "cpu", args.max_batch,
                     lambda s: None, None, "fp32", spec)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    done, _ = generate_missing(requests(f"cluster{actors}", args.takes),
                               TakeCache(tmp / f"cluster{actors}"), ref, "cpu", args.max_batch,
                               lambda s: None, None, "fp32", spec)
    results[actors] = time.perf_counter() - t0
    assert len(done) == args.takes
    print(f"cluster, {actors} actor(s): {args.takes} takes in {results[actors]:.2f} s = "
          f"{60 * args.takes / results[actors]:.1f} takes/min (warm-up with actor start "
          f"{warm_s:.2f} s)")
ray.shutdown()
overhead_ms = 1000 * (results[1] - local_s) / args.takes
print(f"overhead per take against local: {overhead_ms:+.0f} ms "
      f"({results[1] / local_s:.2f}x the local time at 1 actor); 2 actors: "
      f"{results[1] / results[2]:.2f}x the takes per minute of 1")
