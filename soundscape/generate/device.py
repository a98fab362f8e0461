"""Generator stage: which torch device generates (auto, cuda, mps, cpu).

Input: the ``--device`` choice. Output: a concrete device name, or one error line. Imports torch
(only engines call it, when a take must be generated).
"""

from __future__ import annotations

from ..errors import GeneratorError


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GeneratorError("--device cuda was asked for but torch sees no CUDA GPU; use "
                             "--device auto or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise GeneratorError("--device mps was asked for but MPS is not available; use "
                             "--device auto or cpu")
    if device not in ("cpu", "cuda", "mps"):
        raise GeneratorError(f"unknown device {device!r}; use auto, cuda, mps or cpu")
    return device
