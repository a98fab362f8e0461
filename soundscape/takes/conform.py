"""Takes stage, conform: stored takes -> the element's takes at the scene's rate and layout.

Input: an element's ``Source`` and the take store. Output: float32 ``(channels, frames)`` arrays at
the scene's rate in the element's stereo mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..audio_io import atomic_path, atomic_write_text
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


class KeptTakes:
    """Elements' conformed takes kept in a render folder for its next render (by the source's
    ``identity``, which changes whenever its conformed takes would), with the loop points
    searched in them: an edit of one element then conforms nothing and searches no loop
    again (conforming high-passes each take and a loop search resamples it; both need
    ``scipy.signal``, whose import alone takes half a second). A file that cannot be read is
    treated as missing, and made again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, source: Source, suffix: str) -> Path:
        return self.folder / f"{source.identity}{suffix}"

    def takes(self, source: Source) -> list[np.ndarray] | None:
        try:
            with np.load(self._path(source, ".npz"), allow_pickle=False) as data:
                return [np.ascontiguousarray(data[f"arr_{i}"], np.float32)
                        for i in range(len(data.files))]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None

    def save_takes(self, source: Source, takes: list[np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(source, ".npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, *takes)

    def loops(self, source: Source, version: str) -> list[list[float]]:
        """The loop points kept for the takes: ``[take, crossfade, start, end, correlation]``
        rows, searched by the loop search of ``version``."""
        try:
            data = json.loads(self._path(source, ".loops.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        rows = data.get("loops") if isinstance(data, dict) and \
            data.get("version") == version else None
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == 5 and all(
                    isinstance(v, int | float) for v in r) for r in rows):
            return []
        return rows

    def save_loops(self, source: Source, version: str, rows: list[list[float]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._path(source, ".loops.json"),
                          json.dumps({"version": version, "loops": rows}))

    def clear(self) -> None:
        """Remove every kept take and loop point (``--force``: all are made again)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def keep_only(self, sources: list[Source]) -> None:
        """Remove what no element of ``sources`` has any more (an edited or removed one)."""
        wanted = {s.identity for s in sources}
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.split(".", 1)[0] not in wanted:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def element_takes(source: Source, cache: TakeCache,
                  kept: KeptTakes | None = None) -> list[np.ndarray] | None:
    """The element's takes at the scene rate, in its stereo mode; None if a take is missing.
    ``kept``: where a render folder keeps them for its next render (read from, written to).

    ``two_takes`` gives one stereo take per variation (left and right from two generations);
    ``decorrelate`` widens each mono take with a decorrelated copy. A stereo engine's takes
    (Stable Audio) stay as they are but for ``width``; the mixer balances them (``pan``).
    """
    if kept is not None:
        got = kept.takes(source)
        if got is not None:
            return got
    takes = _element_takes(source, cache)
    if kept is not None and takes is not None:
        kept.save_takes(source, takes)
    return takes


def _element_takes(source: Source, cache: TakeCache) -> list[np.ndarray] | None:
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
