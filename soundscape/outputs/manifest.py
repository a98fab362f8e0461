"""Manifest: the typed record of one render, written as ``manifest.json`` and read back.

Input: what the stages produced (plans, takes, stem and mix measurements, warnings). Output:
``Manifest`` values (frozen dataclasses) and their JSON. The CLI and the Python API read these
types; the next render reads the JSON back to find the stems it can keep (``incremental``).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..arrange import Arrangement, Clip, ElementPlan, LoopRun
from ..generate.engines import ENGINES
from ..notices import RenderWarning
from ..takes.plan import Source, Take

MANIFEST_VERSION = 2


def db(x: float | None) -> float | None:
    """A level for JSON: rounded to 0.01 dB, None for -inf (silence) or NaN."""
    return None if x is None or not math.isfinite(x) else round(x, 2)


@dataclass(frozen=True)
class TakeRecord:
    index: int
    key: str
    seed: int
    prompt: str
    duration_s: float
    settings: dict[str, float | int | str | None]
    model: str
    generated: bool
    generator: dict[str, str] | None = None  # the device and precision that made it
    engine: str = "audiogen"
    revision: str = ""  # the hub commit or the local files' hash
    licence: str = ""  # of the weights that made it
    commercial: bool = False  # whether that licence allows commercial use

    @classmethod
    def of(cls, t: Take, generated: bool, generator: dict[str, str] | None = None) \
            -> TakeRecord:
        r = t.request
        lic = ENGINES[r.engine].licence
        return cls(t.index, r.key, r.seed, r.prompt, r.duration_s, r.settings, r.model,
                   generated, generator, r.engine, r.revision, lic.name, lic.commercial)


def placement_json(p: LoopRun | Clip) -> dict[str, Any]:
    if isinstance(p, LoopRun):
        return {"type": "loop", "start_s": p.start_s, "end_s": p.end_s, "times": p.times,
                "crossfade_s": p.crossfade_s}
    return {"type": "play", "start_s": round(p.start_s, 6), "length_s": round(p.length_s, 6),
            "take": p.take, "gain_db": round(p.gain_db, 3), "pan": round(p.pan, 4),
            "fade_in_s": p.fade_in_s, "fade_out_s": p.fade_out_s}


@dataclass(frozen=True)
class StemRecord:
    """One element: where it plays, its takes, and its stem file with its measurements."""

    element: str
    source: str  # "prompt" or "file"
    file: str | None
    placements: tuple[dict[str, Any], ...]
    takes: tuple[TakeRecord, ...]
    stem: str | None  # relative to the render's folder; None: not written (--only)
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    sample_peak: float = 0.0  # linear, before the file's format clips it
    key: str = ""  # everything that changes the stem (incremental renders)
    rendered: bool = True  # re-rendered by this render (False: kept from an earlier one)
    bytes: int = 0  # size of the stem file, to notice a replaced or truncated file
    volume_db: float | None = 0.0  # None: silent (-inf)
    automation: tuple[dict[str, float], ...] = ()  # {time_s, level_db}, as the page draws it

    @property
    def generated(self) -> int:
        return sum(t.generated for t in self.takes)


@dataclass(frozen=True)
class MixRecord:
    file: str
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    pre_master_lufs: float | None
    gain_db: float
    limiter_reduction_db: float
    target_lufs: float | None
    ceiling_dbtp: float
    key: str = ""
    bytes: int = 0
    # (absent before the capped limiter: None) the most the limiter was allowed to reduce, the
    # sum's peak-to-loudness ratio before the master, and, short of the target, the element
    # whose peaks stand highest in the sum with its own PLR
    max_limiting_db: float | None = None
    input_plr_db: float | None = None
    blocked_by: str | None = None
    blocked_by_plr_db: float | None = None
    # an mp3 or ogg mix: loudness_lufs and true_peak_dbtp are what the file decodes to, and
    # this the trim (dB, <= 0) the master got so that its decoded peaks keep the ceiling
    lossy_trim_db: float | None = None


@dataclass(frozen=True)
class ExportRecord:
    """Files written for an engine or an editor from one element (``exports``): its loop file
    (``kind`` "loop") or its pool's one-shots ("pool"), relative to the render's folder."""

    kind: str
    element: str
    files: tuple[str, ...]
    key: str  # everything that changes these files
    bytes: int  # their total size, to notice a replaced or truncated file
    duration_s: float  # a loop file's period; a pool's longest one-shot


@dataclass(frozen=True)
class Manifest:
    scene: str
    variant: str | None
    scene_file: str | None
    duration_s: float
    sample_rate: int
    channels: int
    format: str
    bit_depth: int | None
    model: str  # the model actually used (the --model override, else the scene's)
    seed: int  # the scene's
    rendered: str  # local time of the render, ISO 8601
    only: tuple[str, ...] | None
    mix: MixRecord
    elements: tuple[StemRecord, ...]
    generated: int
    cached: int
    warnings: tuple[RenderWarning, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    manifest_version: int = MANIFEST_VERSION
    exports: tuple[ExportRecord, ...] = ()  # loop files and pools (absent before exports)
    licences: tuple[dict[str, Any], ...] = ()  # see ``licence_summary``

    def element(self, name: str) -> StemRecord | None:
        return next((e for e in self.elements if e.element == name), None)

    def to_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, RenderWarning):
                return v.to_json()
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if hasattr(v, "__dataclass_fields__"):
                return {k: plain(getattr(v, k)) for k in v.__dataclass_fields__}
            return v

        out: dict[str, Any] = plain(self)
        return out

    def write(self, path: Path) -> None:
        from ..audio_io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Read a manifest written by this version (with or without ``exports``); raises
        KeyError/TypeError otherwise."""
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise KeyError("manifest_version")
        elements = tuple(
            StemRecord(**{**e, "placements": tuple(e["placements"]),
                          "automation": tuple(e.get("automation", ())),
                          "takes": tuple(TakeRecord(**t) for t in e["takes"])})
            for e in data["elements"])
        exports = tuple(ExportRecord(**{**x, "files": tuple(x["files"])})
                        for x in data.get("exports", ()))
        return cls(**{**data, "mix": MixRecord(**data["mix"]), "elements": elements,
                      "only": tuple(data["only"]) if data["only"] else None,
                      "exports": exports,
                      "licences": tuple(data.get("licences", ())),
                      "warnings": tuple(RenderWarning.from_json(w) for w in data["warnings"])})


def stem_record(plan: ElementPlan, source: Source, stem: str | None, key: str,
                loudness_lufs: float | None, true_peak_dbtp: float | None, sample_peak: float,
                nbytes: int, generated: Callable[[str], bool],
                generated_with: Callable[[str], dict[str, str] | None],
                loop_seams: Sequence[dict[str, Any]] | None = None) -> StemRecord:
    """The record of one stem rendered now: where it plays (``loop_seams``: per loop run, the
    length and seams the mixer chose), its takes (``generated``: whether a take's key was made by
    this render; ``generated_with``: the device and precision that made it) and its file
    (``stem`` None when --only left it unwritten)."""
    loops = tuple({**placement_json(lp), **(loop_seams[i] if loop_seams is not None else {})}
                  for i, lp in enumerate(plan.loops))
    return StemRecord(
        element=plan.name, source="file" if source.is_file else "prompt", file=source.file,
        placements=loops + tuple(map(placement_json, plan.clips)),
        volume_db=db(plan.volume_db),
        automation=tuple({"time_s": k.time_s, "level_db": k.level_db} for k in plan.automation),
        takes=tuple(TakeRecord.of(t, generated(t.request.key), generated_with(t.request.key))
                    for t in source.takes),
        stem=stem, loudness_lufs=db(loudness_lufs), true_peak_dbtp=db(true_peak_dbtp),
        sample_peak=round(sample_peak, 6), key=key if stem is not None else "",
        rendered=True, bytes=nbytes)


def kept_record(rec: StemRecord) -> StemRecord:
    """An earlier render's stem kept as it is: not rendered now, none of its takes generated."""
    return replace(rec, rendered=False, takes=tuple(replace(t, generated=False)
                                                   for t in rec.takes))


def render_manifest(arrangement: Arrangement, model: str, fmt: str, bit_depth: int | None,
                    only: Collection[str] | None, mix: MixRecord,
                    elements: Sequence[StemRecord], warnings: Sequence[RenderWarning]) \
        -> Manifest:
    """The manifest of one scene or variant render, from its typed parts."""
    n_gen = sum(r.generated for r in elements)
    n_takes = sum(len(r.takes) for r in elements)
    scene = arrangement.scene
    return Manifest(
        scene=scene.name, variant=scene.variant, scene_file=scene.file,
        duration_s=arrangement.duration_s, sample_rate=arrangement.sample_rate,
        channels=arrangement.channels, format=fmt,
        bit_depth=bit_depth, model=model, seed=scene.seed,
        rendered=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        only=tuple(sorted(only)) if only else None, mix=mix, elements=tuple(elements),
        generated=n_gen, cached=n_takes - n_gen, warnings=tuple(warnings), versions=versions(),
        licences=licence_summary(tuple(elements)))


def licence_summary(elements: tuple[StemRecord, ...]) -> tuple[dict[str, Any], ...]:
    """The licences of the weights a render's takes came from: per licence its name, whether
    it allows commercial use, its terms, the notice it asks for, its engines and the elements
    under it (so the elements under a non-commercial licence are listed)."""
    by: dict[str, dict[str, Any]] = {}
    for e in elements:
        for t in e.takes:
            spec = ENGINES[t.engine]
            lic = spec.licence
            # no address here: the audition page embeds the manifest and holds none (the
            # licence's address is in NOTICE.txt and the README)
            entry = by.setdefault(lic.name, {
                "licence": lic.name, "commercial": lic.commercial, "terms": lic.terms,
                "notice": lic.notice, "engines": [], "elements": []})
            if spec.title not in entry["engines"]:
                entry["engines"].append(spec.title)
            if e.element not in entry["elements"]:
                entry["elements"].append(e.element)
    return tuple(by.values())


NOTICE_FILE = "NOTICE.txt"
LICENCE_URLS = {spec.licence.name: spec.licence.url for spec in ENGINES.values()}


def notice_text(licences: Sequence[dict[str, Any]]) -> str | None:
    """What ``NOTICE.txt`` beside a render says: the notice a licence asks for ("Powered by
    Stability AI") with the elements it covers, and any non-commercial licence beside it;
    None when no licence asks for a notice."""
    if not any(lic.get("notice") for lic in licences):
        return None
    lines = []
    for lic in sorted(licences, key=lambda x: not x.get("notice")):  # the notice first
        names = ", ".join(lic["elements"])
        made = " and ".join(lic["engines"])
        url = LICENCE_URLS.get(lic["licence"], "")
        if lic.get("notice"):
            lines += [f"{lic['notice']}.", f"Sounds in this render ({names}) were made with "
                      f"{made}, licensed under the {lic['licence']} ({url})."]
        elif not lic.get("commercial", True):
            lines.append(f"Non-commercial: {names} were made with {made} under "
                         f"{lic['licence']} ({url}); {lic['terms']}.")
    return "\n".join(lines) + "\n"


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None when it is missing, damaged or from another version."""
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def versions() -> dict[str, str]:
    v = {"soundscape": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "pedalboard", "pyloudnorm", "soxr", "audiocraft", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            v[pkg] = metadata.version(pkg)
    return v

