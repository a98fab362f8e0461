"""Outputs stage, tags: metadata written into every file soundscape writes.

Input: a finished audio file and its ``Tags``. Output: the same file with a ``bext`` chunk and a
``LIST/INFO`` block (WAV), Vorbis comments (FLAC, Ogg) or ID3 frames (MP3).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..arrange import Arrangement, ElementPlan, SceneInfo
from ..audio_io import atomic_path
from ..dsp.meter import sound_levels
from ..takes.plan import Source

SOFTWARE = f"soundscape {__version__}"


@dataclass(frozen=True)
class Tags:
    """What a file says about itself: its title, a description (scene/element and prompt) and
    the render's identity (scene, variant, element, seed, model, key), as metadata."""

    title: str
    description: str
    scene: str
    variant: str | None = None
    element: str | None = None
    prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    key: str = ""
    created: str = ""  # local time, ISO 8601 (yyyy-mm-ddThh:mm:ss)
    loudness_lufs: float | None = None
    true_peak_dbtp: float | None = None

    def identity(self) -> dict[str, str]:
        """The manifest's identity of this file, as text fields."""
        out = {"scene": self.scene, "variant": self.variant, "element": self.element,
               "prompt": self.prompt, "seed": None if self.seed is None else str(self.seed),
               "model": self.model, "key": self.key or None, "software": SOFTWARE}
        return {k: v for k, v in out.items() if v}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def element_tags(scene: SceneInfo, plan: ElementPlan, source: Source, title: str,
                 key: str = "", created: str = "", loudness_lufs: float | None = None,
                 true_peak_dbtp: float | None = None) -> Tags:
    """The tags of a file made from one element (``plan``) of ``scene``."""
    what = plan.prompt if plan.prompt is not None else \
        f"recording {Path(plan.file or '').name}"
    seed = source.takes[0].request.seed if source.takes else None
    return Tags(title, f"{scene.label} {plan.name}: {what}", scene.name, scene.variant,
                plan.name, plan.prompt, seed,
                source.takes[0].request.model if source.takes else None, key,
                created or now_iso(), loudness_lufs, true_peak_dbtp)


def mix_tags(arrangement: Arrangement, model: str, key: str, loudness_lufs: float | None,
             true_peak_dbtp: float | None) -> Tags:
    """The tags of a scene's mastered mix: its description (or its elements), its measured
    loudness and true peak."""
    s = arrangement.scene
    what = s.description or ", ".join(p.name for p in arrangement.elements)
    return Tags(f"{s.label} mix", f"{s.label} mix: {what}", s.name, s.variant,
                None, None, s.seed, model, key, now_iso(), loudness_lufs, true_peak_dbtp)


def tag_file(path: str | Path, tags: Tags, loop_frames: int | None = None) -> bool:
    """Write ``tags`` into the finished audio file at ``path`` (replacing earlier tags), and for
    a WAV file with ``loop_frames`` a ``smpl`` loop over the whole file. The file is rewritten
    through a temporary file and renamed. Returns False when the format carries no tags here
    (a WAV file past 4 GiB, RF64).

    WAV: ``bext`` (description, originator ``soundscape <version>``, originator reference = the
    key, date and time, time reference 0, loudness and true peak when measured; ASCII, as BWF
    allows), ``LIST/INFO`` (``INAM`` title, ``IPRD`` scene, ``ICMT`` the identity, ``ISFT``
    software, ``ICRD`` date; Latin-1, as readers take it), ``iXML`` (the same in full UTF-8:
    ``PROJECT``, ``SCENE`` the variant, ``NOTE`` the description, ``TRACK_TITLE``, ``USER`` the
    identity) and, for a 32-bit float file, the ``fact`` chunk.
    FLAC and Ogg: Vorbis comments (TITLE, ALBUM, DESCRIPTION, COMMENT the identity, DATE,
    ENCODER, and SOUNDSCAPE_* one field per part of the identity). MP3: ID3 (TIT2, TALB,
    COMM, TDRC, TSSE, TXXX:SOUNDSCAPE_*).
    """
    from .. import riff

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    date, _, clock = (tags.created or now_iso()).partition("T")
    ident = tags.identity()
    comment = "; ".join(f"{k}={v}" for k, v in ident.items())
    if fmt == "wav":
        fmt_info = _wav_format(path)
        history = ""
        before = {}
        if fmt_info is not None:
            rate, channels, bits, align, tag, frames = fmt_info
            mode = {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")
            history = f"A=PCM,F={rate},W={bits},M={mode},T={SOFTWARE}\r\n"
            if tag == 3:  # IEEE float: not PCM, so a fact chunk with the frame count
                before[b"fact"] = riff.fact(frames)
        before[b"bext"] = riff.bext(tags.description, SOFTWARE, tags.key[:32], date, clock[:8],
                                    0, tags.loudness_lufs, tags.true_peak_dbtp, history)
        after = {b"LIST": riff.info_list({"INAM": tags.title, "IPRD": tags.scene,
                                          "ICMT": comment, "ISFT": SOFTWARE, "ICRD": date}),
                 b"iXML": riff.ixml({"PROJECT": tags.scene, "SCENE": tags.variant or "",
                                     "NOTE": tags.description, "TRACK_TITLE": tags.title,
                                     "USER": comment})}
        if loop_frames is not None and fmt_info is not None:
            after[b"smpl"] = riff.smpl(loop_frames, fmt_info[0])
        return riff.set_chunks(path, before, after)
    fields = {"TITLE": tags.title, "ALBUM": tags.scene, "DESCRIPTION": tags.description,
              "COMMENT": comment, "DATE": date, "ENCODER": SOFTWARE,
              **{f"SOUNDSCAPE_{k.upper()}": v for k, v in ident.items()}}
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        if fmt in ("flac", "ogg"):
            from mutagen.flac import FLAC
            from mutagen.oggvorbis import OggVorbis

            f: Any = FLAC(tmp) if fmt == "flac" else OggVorbis(tmp)
            f.delete()  # replace, not add to, earlier tags
            for k, v in fields.items():
                f[k] = v
            f.save()
        elif fmt == "mp3":
            from mutagen import id3

            t = id3.ID3()
            t.add(id3.TIT2(encoding=3, text=tags.title))
            t.add(id3.TALB(encoding=3, text=tags.scene))
            t.add(id3.COMM(encoding=3, lang="eng", desc="", text=tags.description))
            t.add(id3.TDRC(encoding=3, text=date))
            t.add(id3.TSSE(encoding=3, text=SOFTWARE))
            for k, v in ident.items():
                t.add(id3.TXXX(encoding=3, desc=f"SOUNDSCAPE_{k.upper()}", text=v))
            t.save(tmp)
        else:
            raise ValueError(f"no tags for .{fmt} files")
    return True


def _wav_format(path: Path) -> tuple[int, int, int, int, int, int] | None:
    """``(sample_rate, channels, bits, block_align, format tag, frames)`` from a WAV file's
    ``fmt `` and ``data`` chunks (the tag: 1 PCM, 3 IEEE float; an extensible file's subtype)."""
    import struct

    from ..riff import wav_chunks

    chunks = wav_chunks(path) or []
    fmt = next((c for c in chunks if c.id == b"fmt "), None)
    data = next((c for c in chunks if c.id == b"data"), None)
    if fmt is None or data is None:
        return None
    with path.open("rb") as f:
        f.seek(fmt.offset)
        raw = f.read(min(fmt.size, 40))
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", raw[:16])
    if tag == 0xFFFE and len(raw) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat's first word
        tag = struct.unpack("<H", raw[24:26])[0]
    return rate, channels, bits, align, tag, data.size // max(align, 1)


def levels(audio: np.ndarray, sample_rate: int, looped: bool) -> tuple[float | None,
                                                                       float | None]:
    """Loudness (LUFS) and true peak (dBTP) of a file for its tags, rounded, None where silent
    (``dsp.meter.sound_levels``: the one rule for loops and short sounds)."""
    lufs, peak = sound_levels(audio, sample_rate, looped)
    return (round(lufs, 2) if math.isfinite(lufs) else None,
            round(peak, 2) if math.isfinite(peak) else None)
