"""Takes stage, conform: stored takes -> the element's takes at the scene's rate and layout.

Input: an element's ``Source`` and the take store. Output: float32 ``(channels, frames)`` arrays at
the scene's rate in the element's stereo mode.
"""

from __future__ import annotations

import numpy as np

from ..errors import RenderError
from ..scene import Scene
from .plan import Source, two_takes
from .store import TakeCache


def conform(audio: np.ndarray, sr: int, scene: Scene) -> np.ndarray:
    """A take or recording at the scene's rate, with at most two channels and no DC offset
    (``dsp.dcblock``: a sub-sonic high-pass, as any mastering chain has)."""
    from ..audio_io import resample
    from ..dsp.dcblock import block_dc
    from ..dsp.stereo import downmix

    # the offset goes before resampling: the resampler would turn a take that starts on its
    # offset into a step from silence, which the high-pass then rings with
    return resample(block_dc(downmix(audio, 2), sr), sr, scene.sample_rate)


def element_takes(scene: Scene, source: Source, cache: TakeCache) -> list[np.ndarray] | None:
    """The element's takes at the scene rate, in its stereo mode; None if a take is missing.

    ``two_takes`` gives one stereo take per variation (left and right from two generations);
    ``decorrelate`` widens each mono take with a decorrelated copy.
    """
    from ..audio_io import read_audio
    from ..dsp.stereo import decorrelate, widen

    name = source.element
    e = scene.elements[name]
    seed = scene.element_seed(name)
    if source.file is not None:
        try:
            audio, sr = read_audio(source.file)
        except Exception as err:  # pedalboard raises several types for unreadable files
            raise RenderError(f"{scene.label}: element {name}: cannot read {source.file} "
                              f"({err})") from None
        audio = conform(audio, sr, scene)
        if e.stereo == "decorrelate" and audio.shape[0] == 1 and scene.channels == 2:
            audio = decorrelate(audio, seed, e.width, scene.sample_rate)
        elif audio.shape[0] == 2 and scene.channels == 2 and e.width < 1:
            audio = widen(audio, e.width)
        return [audio]
    out = []
    for t in source.takes:
        got = cache.get(t.request.key)
        if got is None:
            return None
        out.append(conform(got[0], got[1], scene))
    if two_takes(e, scene):
        pairs = []
        for left, right in zip(out[0::2], out[1::2], strict=True):
            n = min(left.shape[1], right.shape[1])
            pairs.append(widen(np.concatenate([left[:, :n], right[:, :n]]), e.width))
        return pairs
    if scene.channels == 2 and e.stereo == "decorrelate":
        return [decorrelate(a, seed + i, e.width, scene.sample_rate) for i, a in enumerate(out)]
    return out
