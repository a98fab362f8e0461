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


def trim_silence(audio: np.ndarray, sample_rate: int, threshold_db: float,
                 pad_ms: float = 10.0) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the peak, keeping
    ``pad_ms`` of margin and a 5 ms fade at each cut so no click is created."""
    env = np.abs(audio).max(axis=0)
    peak = float(env.max(initial=0.0))
    if peak == 0:
        return audio
    above = np.nonzero(env >= peak * 10 ** (threshold_db / 20))[0]
    pad = int(pad_ms * sample_rate / 1000)
    a, b = max(0, int(above[0]) - pad), min(audio.shape[1], int(above[-1]) + 1 + pad)
    out = audio[:, a:b].copy()
    k = min(int(0.005 * sample_rate), out.shape[1] // 2)
    if k > 0:
        ramp = np.linspace(0, 1, k, dtype=np.float32)
        if a > 0:
            out[:, :k] *= ramp
        if b < audio.shape[1]:
            out[:, -k:] *= ramp[::-1]
    return out
