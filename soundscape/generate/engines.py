"""Generator stage: the engine interface, and the engine catalogue (re-exported from the scene
stage, where the format's rules about each engine's settings live).

Input: takes requests. Output: an ``Engine`` is anything with this protocol: takes are float32
``(channels, frames)`` at the engine's own rate and channel count; conforming to the scene happens
in the takes stage. ``factory.open_engine`` picks the engine for a resolved model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..scene.engines import (
    ALL_SETTINGS,
    AUDIOGEN,
    AUDIOGEN_SPEC,
    CC_BY_NC,
    ENGINES,
    SAO_1,
    SAO_1_SAMPLERS,
    SAO_1_SPEC,
    SAO_SMALL,
    SAO_SMALL_SPEC,
    STABILITY_COMMUNITY,
    EngineSpec,
    Licence,
    Setting,
    by_short_name,
    detect_folder,
    engine_of_model,
    layouts_text,
    settings_for,
)

__all__ = ["ALL_SETTINGS", "AUDIOGEN", "AUDIOGEN_SPEC", "CC_BY_NC", "ENGINES", "SAO_1",
           "SAO_1_SAMPLERS", "SAO_1_SPEC", "SAO_SMALL", "SAO_SMALL_SPEC", "STABILITY_COMMUNITY",
           "Engine", "EngineSpec", "Licence", "ProgressFn", "Setting", "by_short_name",
           "detect_folder", "engine_of_model", "layouts_text", "settings_for"]

ProgressFn = Callable[[str, int, int], None]


class Engine(Protocol):
    """What the takes stage asks of an engine. Takes are float32 ``(channels, frames)`` at the
    engine's own rate and channel count; conforming to the scene happens later."""

    spec: EngineSpec
    device: str
    precision: str
    notes: list[str]

    @property
    def sample_rate(self) -> int: ...

    def measure_cost(self, seconds: float = 0.4) -> float: ...

    def plan_batches(self, requests: list[Any]) -> list[list[int]]: ...

    def generate(self, requests: list[Any],
                 on_batch: Callable[[list[Any], list[np.ndarray], float], None] | None = None
                 ) -> list[np.ndarray]: ...
