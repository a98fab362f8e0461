"""Generator stage: text -> audio takes.

Input: ``TakeRequest`` values (engine, model and revision, prompt, duration, seed, the engine's
settings). Output: float32 takes ``(channels, frames)`` at the engine's own rate (AudioGen: 16 kHz
mono; Stable Audio Open: 44.1 kHz stereo). This package's ``__init__``, ``engines`` and ``models``
never import torch; ``audiogen.py`` and ``stable_audio.py`` import torch, audiocraft and diffusers,
and are imported only when a take must really be generated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

GENERATOR_VERSION = "2"  # bump when a change alters the audio produced for the same request
# 2: a key covers the engine and the model's revision (hub commit or the files' hash)

Setting = float | int | str | None


@dataclass(frozen=True)
class TakeRequest:
    """Everything that changes a take's audio. Its ``key`` addresses the take cache.

    ``engine`` names the engine family (``engines.ENGINES``); ``model`` the model as the user
    named it (``hub:<id>`` or ``dir:<hash>``); ``revision`` the exact weights (the hub commit of
    the cached snapshot, or the local files' hash), so takes made with a replica are never
    served for the real weights. ``params``: the engine's own settings, sorted by name.
    """

    engine: str
    model: str
    revision: str
    prompt: str
    duration_s: float
    seed: int
    params: tuple[tuple[str, Setting], ...]

    @classmethod
    def of(cls, engine: str, model: str, revision: str, prompt: str, duration_s: float,
           seed: int, settings: dict[str, Setting]) -> TakeRequest:
        return cls(engine, model, revision, prompt, float(duration_s), int(seed),
                   tuple(sorted(settings.items())))

    @property
    def key(self) -> str:
        payload = {**asdict(self), "generator_version": GENERATOR_VERSION}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def settings(self) -> dict[str, Setting]:
        return dict(self.params)

    def setting(self, name: str) -> Any:
        return self.settings[name]

    def batch_key(self) -> tuple:
        """Requests with equal batch keys may share one ``generate`` call."""
        return (self.engine, self.model, self.revision, self.duration_s,
                tuple((k, v) for k, v in self.params if k != "negative_prompt"))


def audiogen_request(model: str, prompt: str, duration_s: float, temperature: float,
                     top_k: int, top_p: float, cfg_coef: float, extend_stride_s: float,
                     seed: int, revision: str = "") -> TakeRequest:
    """An AudioGen take request (the settings in AudioGen's order)."""
    return TakeRequest.of("audiogen", model, revision or model, prompt, duration_s, seed,
                          {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                           "cfg_coef": cfg_coef, "extend_stride": extend_stride_s})


def batches_by_key(requests: list[TakeRequest], max_batch: int) -> list[list[int]]:
    """Indices of ``requests`` grouped by equal ``batch_key`` (what one generate call must
    share), at most ``max_batch`` to a group, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.batch_key(), []).append(i)
    return [idx[k:k + max_batch] for idx in groups.values()
            for k in range(0, len(idx), max_batch)]


class _XformersBuildWarning(logging.Filter):
    """Drops xFormers' "can't load C++/CUDA extensions ... Please reinstall xformers" warning.

    audiocraft imports xformers at module level but, with its default ``torch`` attention
    backend, uses only xformers' Python classes (``LowerTriangularMask``) and runs attention in
    torch's own ``scaled_dot_product_attention``. The compiled kernels the warning is about are
    never called, and no xformers build for torch 2.11 exists yet (0.0.35, the newest, is built
    for 2.10). Any other xformers message still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "can't load C++/CUDA extensions" not in record.getMessage()


def quiet_xformers() -> None:
    """Install the filter on the ``xformers`` logger (idempotent); call before importing
    audiocraft."""
    log = logging.getLogger("xformers")
    if not any(isinstance(f, _XformersBuildWarning) for f in log.filters):
        log.addFilter(_XformersBuildWarning())
