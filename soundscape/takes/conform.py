"""Takes stage, conform: stored takes -> the element's takes at the scene's rate and layout.

Input: an element's ``Source`` and the take store. Output: float32 ``(channels, frames)`` arrays at
the scene's rate in the element's stereo mode.
"""

from __future__ import annotations

import numpy as np

from ..errors import RenderError
from .plan import Source
from .store import TakeCache


def conform(audio: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    """A take or recording at ``sample_rate``, with at most two channels and no DC offset
    (``dsp.dcblock``: a sub-sonic high-pass, as any mastering chain has)."""
    from ..audio_io import resample
    from ..dsp.dcblock import block_dc
    from ..dsp.stereo import downmix

    # the offset goes before resampling: the resampler would turn a take that starts on its
    # offset into a step from silence, which the high-pass then rings with
    return resample(block_dc(downmix(audio, 2), sr), sr, sample_rate)


def element_takes(source: Source, cache: TakeCache) -> list[np.ndarray] | None:
    """The element's takes at the scene rate, in its stereo mode; None if a take is missing.

    ``two_takes`` gives one stereo take per variation (left and right from two generations);
    ``decorrelate`` widens each mono take with a decorrelated copy. A stereo engine's takes
    (Stable Audio) stay as they are but for ``width``; the mixer balances them (``pan``).
    """
    from ..audio_io import read_audio
    from ..dsp.stereo import decorrelate, widen

    name, sr_out, stereo = source.element, source.sample_rate, source.channels == 2
    if source.file is not None:
        try:
            audio, sr = read_audio(source.file)
        except Exception as err:  # pedalboard raises several types for unreadable files
            raise RenderError(f"{source.scene}: element {name}: cannot read {source.file} "
                              f"({err})") from None
        audio = conform(audio, sr, sr_out)
        if source.stereo == "decorrelate" and audio.shape[0] == 1 and stereo:
            audio = decorrelate(audio, source.seed, source.width, sr_out)
        elif audio.shape[0] == 2 and stereo and source.width < 1:
            audio = widen(audio, source.width)
        return [audio]
    out = []
    for t in source.takes:
        got = cache.get(t.request.key)
        if got is None:
            return None
        out.append(conform(got[0], got[1], sr_out))
    if any(a.shape[0] == 2 for a in out):  # a stereo engine's takes: stereo stays, width applies
        return [widen(a, source.width) if stereo and source.width < 1 else a for a in out]
    if source.paired:
        pairs = []
        for left, right in zip(out[0::2], out[1::2], strict=True):
            n = min(left.shape[1], right.shape[1])
            pairs.append(widen(np.concatenate([left[:, :n], right[:, :n]]), source.width))
        return pairs
    if stereo and source.stereo == "decorrelate":
        return [decorrelate(a, source.seed + i, source.width, sr_out)
                for i, a in enumerate(out)]
    return out
