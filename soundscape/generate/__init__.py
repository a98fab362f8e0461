"""Generator stage: text -> audio takes.

Input: ``TakeRequest`` values (prompt, duration, sampling settings, seed, model identity).
Output: float32 mono takes ``(1, frames)`` at the model's rate (16 kHz for AudioGen). This
package's ``__init__`` and ``models`` never import torch; ``audiogen.py`` is the only module that
imports torch and audiocraft, and it is imported only when a take must really be generated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

GENERATOR_VERSION = "1"  # bump when a change alters the audio produced for the same request


@dataclass(frozen=True)
class TakeRequest:
    """Everything that changes a take's audio. Its ``key`` addresses the take cache."""

    model: str  # model identity (see models.ModelRef.identity)
    prompt: str
    duration_s: float
    temperature: float
    top_k: int
    top_p: float
    cfg_coef: float
    extend_stride_s: float
    seed: int

    @property
    def key(self) -> str:
        payload = {**asdict(self), "generator_version": GENERATOR_VERSION}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def settings(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "cfg_coef": self.cfg_coef, "extend_stride_s": self.extend_stride_s}

    def batch_key(self) -> tuple:
        """Requests with equal batch keys may share one ``generate`` call."""
        return (self.model, self.duration_s, self.temperature, self.top_k, self.top_p,
                self.cfg_coef, self.extend_stride_s)


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
