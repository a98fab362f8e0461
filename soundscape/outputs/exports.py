"""Exports stage: files for a game engine or an editor, beside the mix, from the element's takes.

Input: a planned scene (``Scene``, ``Arrangement``, each element's ``Source``), the take cache and
the render's folder. Output, independent of the mix:

- ``loops/<element>.wav`` (``--loops``): one period of each looped element, the crossfade folded
  in (its last frames blend into its first), with a ``smpl`` chunk holding one forward loop over
  the whole file, so it loops seamlessly in an engine that reads loop points and in any player
  that simply repeats it;
- ``pools/<element>/<element>-<n>.wav`` and ``pools/pools.json`` (``--export pools``): each
  scattered element's one-shots as separate files and how the scene scatters them (interval or
  density, level and pan jitter, overlap), for an engine's random container to play live;
- metadata in every file soundscape writes (``tag_file``): a ``bext`` chunk and a ``LIST/INFO``
  block in WAV files, Vorbis comments in FLAC and Ogg, ID3 frames in MP3.

What was written is recorded in the manifest (``ExportRecord``); a later render rewrites an export
only when what it is made of changed, and an otherwise up-to-date render writes the exports it is
asked for that are missing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..arrange import Arrangement, ElementPlan, SceneInfo
from ..audio_io import atomic_write_text, remove_stale_temps, write_audio
from ..errors import SoundscapeError
from ..notices import RenderWarning
from ..takes.conform import element_takes
from ..takes.plan import Source
from ..takes.store import TakeCache
from .loopfiles import loop_file, loop_key
from .manifest import ExportRecord
from .pools import (
    POOLS_DIR,
    PoolExport,
    cut_tail_warning,
    max_tail_s,
    one_shot,
    pool_key,
    pool_of,
    variation_seeds,
)
from .tags import element_tags, levels, now_iso, tag_file

EXPORT_KINDS = ("loops", "pools")
LOOPS_DIR, POOLS_JSON = "loops", "pools/pools.json"


@dataclass(frozen=True)
class ExportRequest:
    """What a render is asked to export: loop files, pools, or both."""

    loops: bool = False
    pools: bool = False

    @classmethod
    def of(cls, loops: bool = False, export: Sequence[str] = ()) -> ExportRequest:
        unknown = [k for k in export if k not in EXPORT_KINDS]
        if unknown:
            raise SoundscapeError(f"--export {unknown[0]}: unknown export; use "
                                  f"{' or '.join(EXPORT_KINDS)}")
        return cls(loops or "loops" in export, "pools" in export)

    def __bool__(self) -> bool:
        return self.loops or self.pools

    def with_scene(self, scene: SceneInfo) -> ExportRequest:
        """This request plus the scene's own ``exports:``."""
        return ExportRequest(self.loops or "loops" in scene.exports,
                             self.pools or "pools" in scene.exports)


NO_EXPORTS = ExportRequest()


def scattered(plan: ElementPlan) -> bool:
    """Whether an element's one-shots can be exported as a pool: scattered, and it plays."""
    return plan.scatter is not None and bool(plan.clips)


def check_request(arrangements: Sequence[Arrangement], want: ExportRequest) -> None:
    """One clear error when nothing in any of the scenes can be exported as asked."""
    labels = ", ".join(a.scene.label for a in arrangements)
    if want.loops and not any(p.loops for a in arrangements for p in a.elements):
        raise SoundscapeError(f"--loops: {labels} has no looped element (loop: ...); nothing "
                              f"to write; add loop: to an element or leave out --loops")
    if want.pools and not any(scattered(p) for a in arrangements for p in a.elements):
        raise SoundscapeError(f"--export pools: {labels} has no scattered element (scatter: "
                              f"...); nothing to write; leave out --export pools")


@dataclass(frozen=True)
class ExportsDone:
    """What ``write_exports`` did: the records for the manifest, the files written now, and
    notes for the user."""

    records: tuple[ExportRecord, ...]
    written: tuple[Path, ...]
    warnings: tuple[RenderWarning, ...]


@dataclass
class _Folder:
    """One render's folder as the exports see it: the earlier records, what is written now and
    what stays."""

    directory: Path
    old: dict[tuple[str, str], ExportRecord]
    created: str
    bit_depth: int | None
    written: list[Path]
    keep: set[Path]
    notes: list[RenderWarning]

    def current(self, kind: str, name: str, key: str) -> ExportRecord | None:
        """The earlier record of this export if its key matches and its files are intact."""
        r = self.old.get((kind, name))
        if r is None or r.key != key:
            return None
        paths = [self.directory / f for f in r.files]
        if all(p.is_file() for p in paths) and sum(p.stat().st_size for p in paths) == r.bytes:
            return r
        return None

    def write(self, path: Path, audio: object, sample_rate: int) -> None:
        write_audio(path, audio, sample_rate, self.bit_depth)  # type: ignore[arg-type]
        self.written.append(path)


def write_exports(arrangement: Arrangement, sources: dict[str, Source], cache: TakeCache,
                  directory: Path, bit_depth: int | None, previous: Sequence[ExportRecord],
                  want: ExportRequest) -> ExportsDone:
    """Write the exports ``want`` asks for that are missing or out of date, and carry over the
    earlier ones that are still current; delete earlier exports that no longer are.

    ``previous``: the ``ExportRecord`` values of the manifest on disk.
    """
    for folder in [directory / LOOPS_DIR, directory / POOLS_DIR,
                   *(directory / POOLS_DIR).glob("*/")]:
        remove_stale_temps(folder)  # what a killed render left
    f = _Folder(directory, {(r.kind, r.element): r for r in previous}, now_iso(), bit_depth,
                [], set(), [])
    label = arrangement.scene.label
    loops = [p for p in arrangement.elements if p.loops]
    pools = [p for p in arrangement.elements if scattered(p)]
    if want.loops and not loops:
        f.notes.append(RenderWarning("render", f"--loops: {label} has no looped element; "
                                     f"no loop file written"))
    if want.pools and not pools:
        f.notes.append(RenderWarning("render", f"--export pools: {label} has no scattered "
                                     f"element; no pool written"))
    records = [r for plan in loops
               if (r := _loop(f, arrangement, plan, sources[plan.name], cache, want.loops))]
    pool_records = [r for plan in pools
                    if (r := _pool(f, arrangement, plan, sources[plan.name], cache, want.pools))]
    records += pool_records
    for r in records:
        f.keep.update(directory / x for x in r.files)
    _pools_json(f, arrangement, [(p, r) for r in pool_records for p in pools
                                 if p.name == r.element], sources)
    _remove_old(f, previous, pools)
    return ExportsDone(tuple(records), tuple(f.written), tuple(f.notes))


def _loop(f: _Folder, arr: Arrangement, plan: ElementPlan, source: Source, cache: TakeCache,
          asked: bool) -> ExportRecord | None:
    """The loop file of one looped element: kept if current, written if asked and missing."""
    name, sr = plan.name, arr.sample_rate
    key = loop_key(plan, source, sr, f.bit_depth)
    rec = f.current("loop", name, key)
    if rec is not None or not asked:
        return rec
    takes = element_takes(source, cache)
    if takes is None:
        f.notes.append(RenderWarning("render", f"{name} has no take yet; its loop file was not "
                                     f"written", name))
        return None
    period, dry = loop_file(takes[plan.loops[0].take], plan, sr)
    if dry:
        f.notes.append(RenderWarning(
            "render", f"{name}: loops/{name}.wav is written without its effects: "
            f"{', '.join(dry)} change over time, so the file would not join at its ends", name))
    path = f.directory / LOOPS_DIR / f"{name}.wav"
    f.write(path, period, sr)
    lufs, peak = levels(period, sr, looped=True)
    tag_file(path, element_tags(arr.scene, plan, source, f"{name} (loop)", key, f.created, lufs,
                                peak), loop_frames=period.shape[1])
    return ExportRecord("loop", name, (str(path.relative_to(f.directory)),), key,
                        path.stat().st_size, period.shape[1] / sr)


def _pool(f: _Folder, arr: Arrangement, plan: ElementPlan, source: Source, cache: TakeCache,
          asked: bool) -> ExportRecord | None:
    """The one-shot files of one scattered element: kept if current, written if asked."""
    name, sr = plan.name, arr.sample_rate
    bound = max_tail_s(arr.duration_s)
    key = pool_key(plan, source, sr, f.bit_depth, bound)
    rec = f.current("pool", name, key)
    if rec is not None or not asked:
        return rec
    takes = element_takes(source, cache)
    if takes is None:
        f.notes.append(RenderWarning("render", f"{name} has no take yet; its pool was not "
                                     f"written", name))
        return None
    files, total = [], 0
    seeds = variation_seeds(source)
    for i, take in enumerate(takes):
        cut = one_shot(take, plan, sr, bound)
        shot = cut.audio
        path = f.directory / POOLS_DIR / name / f"{name}-{i + 1}.wav"
        if cut.cut_level_db is not None:
            f.notes.append(cut_tail_warning(name, str(path.relative_to(f.directory)), cut, sr))
        f.write(path, shot, sr)
        tags = element_tags(arr.scene, plan, source, f"{name} {i + 1}", key, f.created,
                            *levels(shot, sr, looped=False))
        tag_file(path, replace(tags, seed=seeds[i]) if seeds else tags)
        files.append(str(path.relative_to(f.directory)))
        total += path.stat().st_size
    return ExportRecord("pool", name, tuple(files), key, total,
                        max(t.shape[1] for t in takes) / sr)


def _pools_json(f: _Folder, arr: Arrangement, pools: list[tuple[ElementPlan, ExportRecord]],
                sources: dict[str, Source]) -> None:
    """``pools/pools.json`` for the pools kept or written, rewritten only when it changes."""
    if not pools:
        return
    doc = PoolExport(arr.scene.name, arr.scene.variant, arr.sample_rate, arr.duration_s,
                     tuple(pool_of(p, sources[p.name], r.files, f.directory) for p, r in pools))
    text = json.dumps(doc.to_json(), indent=2) + "\n"
    target = f.directory / POOLS_JSON
    f.keep.add(target)
    try:
        same = target.read_text(encoding="utf-8") == text
    except OSError:
        same = False
    if not same:
        atomic_write_text(target, text)
        f.written.append(target)


def _remove_old(f: _Folder, previous: Sequence[ExportRecord], pools: list[ElementPlan]) -> None:
    """Delete earlier exports that are no longer current, and folders left empty."""
    for r in previous:
        for x in r.files:
            p = f.directory / x
            if p not in f.keep:
                with contextlib.suppress(OSError):
                    p.unlink()
    if f.directory / POOLS_JSON not in f.keep:
        with contextlib.suppress(OSError):
            (f.directory / POOLS_JSON).unlink()
    for folder in [f.directory / POOLS_DIR / p.name for p in pools] + \
            [f.directory / POOLS_DIR, f.directory / LOOPS_DIR]:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
