"""Generator stage: the engine for a resolved model (AudioGen, Stable Audio Open 1.0 or Small).

Input: a ``ModelRef`` (its ``engine`` was told from its name or files) and the generation options.
Output: an object with the ``engines.Engine`` interface. Imports the engine's module (torch,
audiocraft or diffusers) only when called.
"""

from __future__ import annotations

from .device import pick_device
from .engines import AUDIOGEN, SAO_1, SAO_SMALL, Engine, ProgressFn
from .models import Log, ModelRef

__all__ = ["open_engine", "pick_device"]


def open_engine(ref: ModelRef, device: str = "auto", max_batch: int = 8,
                progress: ProgressFn | None = None, log: Log | None = None,
                precision: str = "auto") -> Engine:
    """Load the model's engine; the model's weights are read now."""
    if ref.engine == SAO_1:
        from .stable_audio import StableAudioOpen1

        return StableAudioOpen1(ref, device, max_batch=max_batch, progress=progress, log=log,
                                precision=precision)
    if ref.engine == SAO_SMALL:
        from .sao_small import StableAudioOpenSmall

        return StableAudioOpenSmall(ref, device, max_batch=max_batch, progress=progress,
                                    log=log, precision=precision)
    assert ref.engine == AUDIOGEN, ref.engine
    from .audiogen import Generator

    return Generator(ref, device, max_batch=max_batch, progress=progress, log=log,  # type: ignore[return-value]
                     precision=precision)
