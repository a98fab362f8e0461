"""Fades: equal-power fade curves, shared by plays, loop runs and the mixer."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def fade_curves(fade_in: int, fade_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fade-in and fade-out curves of the given lengths (float32)."""
    def curve(k: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if k <= 0:
            return np.ones(0, dtype=np.float32)
        return fn(np.linspace(0, math.pi / 2, k, endpoint=False) + math.pi / (4 * k)) \
            .astype(np.float32)

    return curve(fade_in, np.sin), curve(fade_out, np.cos)


def apply_fades(audio: np.ndarray, fade_in: int, fade_out: int) -> np.ndarray:
    """Equal-power fades on the ends of ``audio`` (in place; only the faded frames are touched).
    Returns ``audio``."""
    n = audio.shape[1]
    fin, fout = fade_curves(min(fade_in, n), min(fade_out, n))
    if fin.size:
        audio[:, : fin.size] *= fin
    if fout.size:
        audio[:, n - fout.size:] *= fout
    return audio


