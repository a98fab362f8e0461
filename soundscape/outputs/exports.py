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
from typing import Any

from ..arrange import Arrangement
from ..audio_io import atomic_write_text, remove_stale_temps, write_audio
from ..errors import SoundscapeError
from ..notices import RenderWarning
from ..scene import Scene
from ..takes.conform import element_takes
from ..takes.plan import Source
from ..takes.store import TakeCache
from .loopfiles import TIME_VARYING, loop_key, loop_period, periodic_effects
from .pools import (
    POOLS_DIR,
    Pool,
    PoolExport,
    _pool,
    cut_tail_warning,
    max_tail_s,
    one_shot,
    pool_key,
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

    def with_scene(self, scene: Scene) -> ExportRequest:
        """This request plus the scene's own ``exports:``."""
        return ExportRequest(self.loops or "loops" in scene.exports,
                             self.pools or "pools" in scene.exports)


NO_EXPORTS = ExportRequest()


def check_request(scenes: Sequence[tuple[Scene, Arrangement]], want: ExportRequest) -> None:
    """One clear error when nothing in any of the scenes can be exported as asked."""
    if want.loops and not any(p.loops for _, arr in scenes for p in arr.elements):
        labels = ", ".join(s.label for s, _ in scenes)
        raise SoundscapeError(f"--loops: {labels} has no looped element (loop: ...); nothing "
                              f"to write; add loop: to an element or leave out --loops")
    if want.pools and not any(s.elements[p.name].scatter is not None and p.clips
                              for s, arr in scenes for p in arr.elements):
        labels = ", ".join(s.label for s, _ in scenes)
        raise SoundscapeError(f"--export pools: {labels} has no scattered element (scatter: "
                              f"...); nothing to write; leave out --export pools")


@dataclass(frozen=True)
class ExportsDone:
    """What ``write_exports`` did: the records for the manifest, the files written now, and
    notes for the user."""

    records: tuple[Any, ...]
    written: tuple[Path, ...]
    warnings: tuple[RenderWarning, ...]


def write_exports(scene: Scene, arrangement: Arrangement, sources: dict[str, Source],
                  cache: TakeCache, directory: Path, bit_depth: int | None,
                  previous: Sequence[Any], want: ExportRequest) -> ExportsDone:
    """Write the exports ``want`` asks for that are missing or out of date, and carry over the
    earlier ones that are still current; delete earlier exports that no longer are.

    ``previous``: the ``ExportRecord`` values of the manifest on disk.
    """
    from .manifest import ExportRecord

    for folder in [directory / LOOPS_DIR, directory / POOLS_DIR,
                   *(directory / POOLS_DIR).glob("*/")]:
        remove_stale_temps(folder)  # what a killed render left
    old = {(r.kind, r.element): r for r in previous}
    records: list[ExportRecord] = []
    written: list[Path] = []
    notes: list[RenderWarning] = []
    created = now_iso()
    keep: set[Path] = set()

    def current(kind: str, name: str, key: str) -> ExportRecord | None:
        r = old.get((kind, name))
        if r is None or r.key != key:
            return None
        paths = [directory / f for f in r.files]
        if all(p.is_file() for p in paths) and sum(p.stat().st_size for p in paths) == r.bytes:
            return r
        return None

    loops = [p for p in arrangement.elements if p.loops]
    pools = [p for p in arrangement.elements
             if scene.elements[p.name].scatter is not None and p.clips]
    if want.loops and not loops:
        notes.append(RenderWarning("render", f"--loops: {scene.label} has no looped element; "
                                   f"no loop file written"))
    if want.pools and not pools:
        notes.append(RenderWarning("render", f"--export pools: {scene.label} has no scattered "
                                   f"element; no pool written"))

    for plan in loops:
        name = plan.name
        key = loop_key(plan, sources[name], scene, bit_depth)
        rec = current("loop", name, key)
        if rec is None and want.loops:
            takes = element_takes(scene, sources[name], cache)
            if takes is None:
                notes.append(RenderWarning("render", f"{name} has no take yet; its loop file "
                                           f"was not written", name))
                continue
            period = loop_period(takes[plan.loops[0].take], plan.loops[0], scene.sample_rate)
            dry = sorted({fx.name for fx in plan.effects} & TIME_VARYING)
            if dry:
                notes.append(RenderWarning(
                    "render", f"{name}: loops/{name}.wav is written without its effects: "
                    f"{', '.join(dry)} change over time, so the file would not join at its "
                    f"ends", name))
            else:
                period = periodic_effects(period, plan, scene.sample_rate)
            path = directory / LOOPS_DIR / f"{name}.wav"
            write_audio(path, period, scene.sample_rate, bit_depth)
            lufs, peak = levels(period, scene.sample_rate, looped=True)
            tag_file(path, element_tags(scene, name, sources[name], f"{name} (loop)", key,
                                        created, lufs, peak), loop_frames=period.shape[1])
            written.append(path)
            rec = ExportRecord("loop", name, (str(path.relative_to(directory)),), key,
                               path.stat().st_size, period.shape[1] / scene.sample_rate)
        if rec is not None:
            records.append(rec)
            keep.update(directory / f for f in rec.files)

    pool_values: list[Pool] = []
    for plan in pools:
        name = plan.name
        e = scene.elements[name]
        key = pool_key(plan, sources[name], scene, bit_depth)
        rec = current("pool", name, key)
        if rec is None and want.pools:
            takes = element_takes(scene, sources[name], cache)
            if takes is None:
                notes.append(RenderWarning("render", f"{name} has no take yet; its pool was "
                                           f"not written", name))
                continue
            files = []
            total = 0
            for i, take in enumerate(takes):
                cut = one_shot(take, plan, e.fade_in, e.fade_out, scene.sample_rate,
                               max_tail_s(scene))
                shot = cut.audio
                path = directory / POOLS_DIR / name / f"{name}-{i + 1}.wav"
                if cut.cut_level_db is not None:
                    notes.append(cut_tail_warning(name, str(path.relative_to(directory)), cut,
                                                  scene.sample_rate))
                write_audio(path, shot, scene.sample_rate, bit_depth)
                tags = element_tags(scene, name, sources[name], f"{name} {i + 1}", key,
                                    created, *levels(shot, scene.sample_rate, looped=False))
                seeds = variation_seeds(scene, sources[name])
                if seeds:
                    tags = replace(tags, seed=seeds[i])
                tag_file(path, tags)
                written.append(path)
                files.append(str(path.relative_to(directory)))
                total += path.stat().st_size
            rec = ExportRecord("pool", name, tuple(files), key, total,
                               max(t.shape[1] for t in takes) / scene.sample_rate)
        if rec is not None:
            records.append(rec)
            keep.update(directory / f for f in rec.files)
            pool_values.append(_pool(scene, plan, sources[name], rec, directory))

    if pool_values:
        doc = PoolExport(scene.name, scene.variant, scene.sample_rate, scene.duration,
                         tuple(pool_values))
        text = json.dumps(doc.to_json(), indent=2) + "\n"
        target = directory / POOLS_JSON
        keep.add(target)
        try:
            same = target.read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            atomic_write_text(target, text)
            written.append(target)

    for r in previous:  # earlier exports that are no longer current
        for f in r.files:
            p = directory / f
            if p not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
    if not pool_values:
        with contextlib.suppress(OSError):
            (directory / POOLS_JSON).unlink()
    for folder in [directory / POOLS_DIR / p.name for p in pools] + \
            [directory / POOLS_DIR, directory / LOOPS_DIR]:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    return ExportsDone(tuple(records), tuple(written), tuple(notes))
