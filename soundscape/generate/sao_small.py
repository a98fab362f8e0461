"""Generator stage, a torch importer: Stable Audio Open Small behind the engine interface.

Input: ``TakeRequest`` values of engine ``stable-audio-open-small``. Output: float32 stereo takes
``(2, frames)`` at 44.1 kHz. The model itself (stable-audio-tools' checkpoint on diffusers'
building blocks, the ping-pong sampler) is ``stable_audio_small``; this module adapts it to
``engines.Engine``: batching by settings, progress, cost probe, precision. Small runs on the CPU
or a CUDA GPU (measured on an H200: benchmarks/generate_gpu.py); on MPS it is noted and runs on
the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import TakeRequest, batches_by_key, quiet_xformers
from .device import pick_device
from .engines import SAO_SMALL_SPEC, EngineSpec, ProgressFn
from .models import Log, ModelRef, locate
from .precision import choose_precision
from .stable_audio_small.model import SmallModel, load_small
from .stable_audio_small.sample import generate_small, to_device


class StableAudioOpenSmall:
    """Stable Audio Open Small with seeds, batches of equal settings and a cost probe."""

    spec: EngineSpec = SAO_SMALL_SPEC

    def __init__(self, ref: ModelRef, device: str = "cpu", max_batch: int = 8,
                 progress: ProgressFn | None = None, log: Log | None = None,
                 precision: str = "auto", model: SmallModel | None = None) -> None:
        quiet_xformers()  # load_small imports diffusers, which imports xformers
        self.ref = ref
        self.notes: list[str] = []
        dev = "cpu" if device == "cpu" else pick_device(device)
        if dev not in ("cpu", "cuda"):
            self.notes.append(f"Stable Audio Open Small runs on the CPU here (asked: {device})")
            dev = "cpu"
        self.device = dev
        prec = choose_precision(precision, dev)
        if prec == "fp16":
            if precision == "fp16":  # asked for, not chosen by auto
                self.notes.append("fp16 is not offered for Stable Audio Open Small; using fp32")
            prec = "fp32"
        self.precision = prec
        self.model = model if model is not None else load_small(locate(ref, log=log), log=log)
        if dev == "cuda":
            to_device(self.model, "cuda")
        self.max_batch = max(1, max_batch)
        self.progress = progress

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def measure_cost(self, seconds: float = 5.0) -> float:
        """Seconds of compute per second of audio at batch 1 (default settings), from one
        probe take of ``seconds`` (after a short warm-up take)."""
        defaults: dict[str, Any] = self.spec.settings
        generate_small(self.model, ["probe"], [0.5], [0], steps=1, precision=self.precision)
        t0 = time.perf_counter()
        generate_small(self.model, ["probe"], [seconds], [0], steps=int(defaults["steps"]),
                       cfg_coef=float(defaults["cfg_coef"]), precision=self.precision)
        return (time.perf_counter() - t0) / seconds

    def plan_batches(self, requests: list[TakeRequest]) -> list[list[int]]:
        """Indices grouped by equal settings (the sampler's steps and guidance are per call)."""
        return batches_by_key(requests, self.max_batch)

    def generate(self, requests: list[TakeRequest],
                 on_batch: Callable[[list[TakeRequest], list[np.ndarray], float], None]
                 | None = None) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(requests)
        for batch in self.plan_batches(requests):
            reqs = [requests[i] for i in batch]
            s: dict[str, Any] = reqs[0].settings
            label = f"{len(reqs)} take(s) of {reqs[0].duration_s:g} s"
            if self.progress is not None:
                self.progress(label, 0, 1)
            t0 = time.perf_counter()
            negatives = [str(r.settings.get("negative_prompt") or "") for r in reqs]
            takes = generate_small(self.model, [r.prompt for r in reqs],
                                   [r.duration_s for r in reqs], [r.seed for r in reqs],
                                   steps=int(s["steps"]), cfg_coef=float(s["cfg_coef"]),
                                   negative_prompts=negatives if any(negatives) else None,
                                   precision=self.precision)
            if self.progress is not None:
                self.progress(label, 1, 1)
            for i, take in zip(batch, takes, strict=True):
                results[i] = take
            if on_batch is not None:
                on_batch(reqs, takes, time.perf_counter() - t0)
        return [r for r in results if r is not None]
