"""Incremental renders: what addresses a stem and a mix, and what an earlier render left to keep.

Input: the arrangement's ``ElementPlan`` values, the takes stage's ``Source`` identities, the
output settings, and the previous render's manifest. Output: a key per stem and for the mix, and
per element a decision: keep the stem on disk, or render it (and write it, or only sum it).

A stem's key covers everything that changes its samples: its takes (their cache keys, or the
recording's content), its stereo mode, its plan (placements, volume, automation, effects and
their impulse responses), the scene's rate, length and channels, the file format and the mixer's
version. Equal keys mean equal files, so an unchanged stem is never rewritten. The mix's key
covers the stem keys and the master.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ..arrange import ElementPlan
from ..takes.plan import Source, file_digest
from .manifest import Manifest, StemRecord

# Bump when mixing or mastering changes the output for the same inputs.
MIXER_VERSION = "4"  # 3: settled loops copied (a reverb's differ by its rounding noise); 4: not
# before the effects' memory has passed (3 could copy a loop before a long echo sounded)
EXPORTS_VERSION = "1"  # bump when an export's audio changes for the same inputs
LOSSLESS = ("wav", "flac")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def export_key(*parts: Any) -> str:
    """The key of one export file (a loop file, a pool's one-shot) from what it is made of."""
    return hashlib.sha256(json.dumps([EXPORTS_VERSION, *parts], sort_keys=True,
                                     default=repr).encode()).hexdigest()


@dataclass(frozen=True)
class Output:
    """Where and how a render writes: the settings every key depends on."""

    sample_rate: int
    channels: int
    frames: int
    fmt: str
    bit_depth: int | None

    @property
    def float_stems(self) -> bool:
        return self.fmt == "wav" and self.bit_depth == 32


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(obj: Any) -> Any:
    """What ``dataclasses.asdict`` makes of ``obj`` as ``json.dumps`` writes it (dataclasses
    as dicts, tuples as lists), without its deep copy of every value: a scene's plans hold
    every scattered play, and keying them by ``asdict`` took 40 ms of an edit's start-up."""
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        return {name: _plain(getattr(obj, name)) for name in _field_names(type(obj))}
    return obj


def stem_key(plan: ElementPlan, source: Source, out: Output) -> str:
    irs = [file_digest(fx.ir_path) for fx in plan.effects if fx.ir_path]
    return _hash({"mixer": MIXER_VERSION, "out": asdict(out), "plan": _plain(plan),
                  "source": source.identity, "irs": irs})


def level_free_key(plan: ElementPlan, source: Source, out: Output) -> str:
    """``stem_key`` at 0 dB: two stems with the same level-free key differ only by their
    volume (applied last, after the effects), so one's measurements scale to the other's."""
    return stem_key(replace(plan, volume_db=0.0), source, out)


def mix_key(stem_keys: dict[str, str], master: dict[str, Any], out: Output) -> str:
    return _hash({"mixer": MIXER_VERSION, "out": asdict(out), "stems": stem_keys,
                  "master": master})


@dataclass(frozen=True)
class Decision:
    """What to do with one element's stem."""

    keep: StemRecord | None  # the earlier render's stem, still current on disk
    write: bool  # render it and write the file (False with keep, or outside --only)

    @property
    def render(self) -> bool:
        return self.keep is None


def stored_is_current(rec: StemRecord | None, key: str, directory: Path, path: Path) -> bool:
    """The earlier render wrote this exact stem at ``path`` and it is still there, whole."""
    if rec is None or rec.key != key or rec.stem is None:
        return False
    if directory / rec.stem != path:
        return False
    try:
        return path.stat().st_size == rec.bytes
    except OSError:
        return False


def summable(rec: StemRecord, out: Output) -> bool:
    """A kept stem can be read back into the mix: lossless and not clipped by its format."""
    return out.fmt in LOSSLESS and (out.float_stems or rec.sample_peak <= 1.0)


def decide(names: list[str], keys: dict[str, str], paths: dict[str, Path],
           previous: Manifest | None, directory: Path, only: set[str] | None,
           force: bool) -> dict[str, Decision]:
    """Per element: keep the stored stem or render it, and whether its file is written."""
    out = {}
    for name in names:
        rec = previous.element(name) if previous is not None else None
        current = stored_is_current(rec, keys[name], directory, paths[name])
        if current and not (force and (only is None or name in only)):
            out[name] = Decision(rec, False)
        else:  # outside --only a stem is rendered for the mix; its file is written only if
            # there is none (a fresh folder), so the stems on disk still sum to the mix
            out[name] = Decision(None, only is None or name in only or not paths[name].exists())
    return out


def mix_is_current(previous: Manifest | None, key: str, directory: Path) -> bool:
    if previous is None or previous.mix.key != key:
        return False
    try:
        return (directory / previous.mix.file).stat().st_size == previous.mix.bytes
    except OSError:
        return False


def stale_files(previous: Manifest | None, directory: Path, keep: set[Path]) -> list[Path]:
    """Files the earlier render wrote that this one does not (removed elements, old formats)."""
    if previous is None:
        return []
    found = []
    old_mix = directory / previous.mix.file
    if old_mix not in keep and old_mix.is_file():
        found.append(old_mix)
    for rec in previous.elements:
        if rec.stem is not None:
            p = directory / rec.stem
            if p not in keep and p.is_file():
                found.append(p)
    return found


def forget_rewritten(previous: Manifest | None, rewritten: set[str], path: Path) -> None:
    """Before any file is replaced, drop the earlier manifest's records of the stems and the mix
    a render rewrites: killed half-way, it then leaves a manifest that names only files it has
    not touched, and the next render keeps those and renders the rest."""
    if previous is None:
        return
    interim = replace(previous, elements=tuple(
        e for e in previous.elements if e.element not in rewritten),
        mix=replace(previous.mix, key=""))
    interim.write(path)


def remove_stale(previous: Manifest | None, directory: Path, keep: set[Path]) -> None:
    """Delete the files the earlier render wrote that this one does not (``stale_files``)."""
    for stale in stale_files(previous, directory, keep):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
