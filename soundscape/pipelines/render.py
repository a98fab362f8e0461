"""Render stage: the only module that knows the stage order.

Input: scene files (or ``Scene`` objects) and options. Output: per scene and variant, under
``<out>/<scene>/[<variant>/]``: ``mix.<fmt>``, ``stems/<element>.<fmt>`` and ``manifest.json``,
described by a typed ``RenderResult``.

Order: scene -> sources (takes) -> arrangement -> stem and mix keys against the last render
(incremental) -> generate the missing takes of stems to render (batched across scenes and
variants, stored after every batch) -> conform takes -> stems -> master -> files and manifest.
A render with nothing changed writes nothing.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..arrange import Arrangement, arrange
from ..audio_io import (
    atomic_write_text,
    forget_cached,
    output_problem,
    remove_stale_temps,
    written_bit_depth,
)
from ..dsp.bus import Bus
from ..dsp.effects import chain_tail_s
from ..dsp.meter import Meter
from ..errors import RenderError, SceneError, SoundscapeError
from ..generate.engines import ENGINES
from ..generate.models import resolve
from ..locks import locked
from ..master import ElementLevels, master_bus, measure_sum
from ..mixer import budget
from ..mixer.loops import FoundLoops, LoopPoints
from ..mixer.workers import (
    StemJob,
    StemMeasure,
    add_stem_file,
    choose_workers,
    clipping_warning,
    render_stems,
)
from ..notices import RenderWarning
from ..options import ClusterSpec, GenerationOptions, Log, OutputOptions, Progress, quiet
from ..outputs import sumcache
from ..outputs.exports import NO_EXPORTS, ExportRequest, check_request, write_exports
from ..outputs.incremental import (
    LOSSLESS,
    MIXER_VERSION,
    Decision,
    Output,
    decide,
    forget_rewritten,
    level_free_key,
    mix_is_current,
    mix_key,
    remove_stale,
    stale_files,
    stem_key,
    summable,
)
from ..outputs.lossy import MasterFile
from ..outputs.manifest import (
    NOTICE_FILE,
    Manifest,
    MixRecord,
    StemRecord,
    db,
    kept_record,
    notice_text,
    read_manifest,
    render_manifest,
    stem_record,
)
from ..outputs.page import OverviewAccumulator, overview_of, write_page
from ..outputs.tags import element_tags, mix_tags, tag_file
from ..scene import Scene, load_scene
from ..takes.conform import KeptTakes, element_takes
from ..takes.plan import Models, Source, plan_sources
from ..takes.run import generate_missing
from ..takes.store import TakeCache


@dataclass(frozen=True)
class RenderResult:
    """What one scene or variant render left on disk, and its manifest."""

    manifest: Manifest
    directory: Path
    manifest_path: Path
    up_to_date: bool  # nothing had changed: nothing was written (exports aside)
    exported: tuple[Path, ...] = ()  # loop files and pools written by this render
    export_warnings: tuple[RenderWarning, ...] = ()  # about them, for this render only

    @property
    def scene(self) -> str:
        return self.manifest.scene

    @property
    def variant(self) -> str | None:
        return self.manifest.variant

    @property
    def mix(self) -> Path:
        return self.directory / self.manifest.mix.file

    @property
    def stems(self) -> dict[str, Path]:
        """The stems on disk that belong to this render (written now or kept)."""
        return {e.element: self.directory / e.stem for e in self.manifest.elements if e.stem}

    @property
    def elements(self) -> tuple[StemRecord, ...]:
        return self.manifest.elements

    @property
    def generated(self) -> int:
        return self.manifest.generated if not self.up_to_date else 0

    @property
    def cached(self) -> int:
        return self.manifest.cached + (self.manifest.generated if self.up_to_date else 0)

    @property
    def mix_lufs(self) -> float:
        v = self.manifest.mix.loudness_lufs
        return -math.inf if v is None else v

    @property
    def mix_true_peak_dbtp(self) -> float:
        v = self.manifest.mix.true_peak_dbtp
        return -math.inf if v is None else v

    @property
    def warnings(self) -> tuple[RenderWarning, ...]:
        return self.manifest.warnings + self.export_warnings

    @property
    def loops(self) -> dict[str, Path]:
        """The loop files on disk (``--loops``), by element."""
        return {x.element: self.directory / x.files[0] for x in self.manifest.exports
                if x.kind == "loop"}


@dataclass
class _Plan:
    """One scene or variant, planned before any audio: what to render, keep and write."""

    scene: Scene
    model: str
    sources: dict[str, Source]
    arrangement: Arrangement
    out: Output
    directory: Path
    keys: dict[str, str]
    mix_key: str
    decisions: dict[str, Decision]
    previous: Manifest | None
    redo_mix: bool

    def path(self, name: str) -> Path:
        return self.directory / "stems" / f"{name}.{self.out.fmt}"

    @property
    def wrap(self) -> int:
        """Frames rendered past the end and folded onto the start (a loopable mix), or 0."""
        x = self.scene.master.loopable
        return int(round(x * self.out.sample_rate)) if x else 0

    @property
    def overhang(self) -> int:
        """Frames the mix bus runs on past the end: a loopable mix's wrap, plus the longest
        tail its elements' effects ring on after a play the wrap cuts (all of it is folded
        onto the start, so no tail stops dead in the loop); 0 for a plain mix."""
        if not self.wrap:
            return 0
        tail_s = max((chain_tail_s(e.effects) for e in self.arrangement.elements), default=0.0)
        return self.wrap + int(math.ceil(tail_s * self.out.sample_rate))

    def needs_audio(self, name: str) -> bool:
        """Whether this element's takes are needed: to render its stem, or to sum a kept stem
        that cannot be read back exactly (lossy format, clipped)."""
        d = self.decisions[name]
        if not self.redo_mix:
            return False
        return d.keep is None or not self.sums(d.keep)

    def sums(self, keep: StemRecord) -> bool:
        """Whether a kept stem's file can be summed into the mix as it is: exact enough, and
        no loopable mix needs what rings past its end."""
        return summable(keep, self.out) and not self.wrap


@contextlib.contextmanager
def _about(scene: Scene) -> Iterator[None]:
    """An error about ``scene`` that does not name it yet is raised again with its file (and
    variant) in front, so that with several scenes or variants every line says which one."""
    try:
        yield
    except SceneError:
        raise  # file:line already
    except SoundscapeError as e:
        text = str(e)
        where = scene.label if scene.path is None else \
            f"{scene.path}" + (f" ({scene.variant})" if scene.variant else "")
        if text.startswith((where, f"{scene.label}:", f"{scene.label} ")):
            raise
        raise type(e)(f"{where}: {text}") from None


def output_dir(out: Path, scene: Scene) -> Path:
    d = out / scene.name
    return d / scene.variant if scene.variant else d


def _plan(scene: Scene, models: Models, model: str, output: OutputOptions,
          directory: Path | None = None) -> _Plan:
    """What one scene or variant needs: its sources, arrangement, keys, and per stem whether
    the earlier render's file is current; nothing is read but the earlier manifest."""
    fmt, bit_depth = output.fmt, output.bit_depth
    sources = plan_sources(scene, models)
    arr = arrange(scene, {n: s.length_s for n, s in sources.items()})
    m = scene.master
    out = Output(scene.sample_rate, scene.channels, int(round(scene.duration * scene.sample_rate)),
                 fmt, bit_depth)
    directory = directory or output_dir(output.out, scene)
    keys = {p.name: stem_key(p, sources[p.name], out) for p in arr.elements}
    mkey = mix_key(keys, {"effects": [repr(fx) for fx in m.effects], "loudness": m.loudness,
                          "ceiling": m.ceiling, "loopable": m.loopable,
                          "max_limiting": m.max_limiting}, out)
    previous = read_manifest(directory / "manifest.json")
    paths = {n: directory / "stems" / f"{n}.{fmt}" for n in keys}
    decisions = decide(list(keys), keys, paths, previous, directory,
                       set(output.only) if output.only else None, output.force)
    redo = (any(d.render for d in decisions.values())
            or not mix_is_current(previous, mkey, directory)
            or bool(stale_files(previous, directory,
                                {*paths.values(), directory / f"mix.{fmt}"}))
            or not (directory / "manifest.json").is_file())
    return _Plan(scene, model, sources, arr, out, directory, keys, mkey, decisions, previous,
                 redo)


def _mix(p: _Plan, cache: TakeCache, generated: frozenset[str],
         shared: tuple[RenderWarning, ...], output: OutputOptions) -> RenderResult:
    """Conform, render the stems that changed, sum the kept ones, master and write. A sum
    kept by the last render (``sumcache``) is updated instead, when that reads fewer files."""
    scene, out = p.scene, p.out
    warnings = [*p.arrangement.warnings, *shared]
    jobs: list[StemJob] = []
    kept = {n: p.directory / d.keep.stem for n, d in p.decisions.items()  # type: ignore[operator]
            if d.keep is not None and p.sums(d.keep)}
    forget_rewritten(p.previous, {n for n, d in p.decisions.items() if d.keep is None and d.write},
                     p.directory / "manifest.json")
    mix_path = p.directory / f"mix.{out.fmt}"
    m = scene.master
    keeps_sum = _keeps_sum(p, output, kept)
    cached = sumcache.read(p.directory, out) if keeps_sum else None
    level_free = {n: level_free_key(p.arrangement.plan(n), p.sources[n], out) for n in p.keys}
    # the conformed takes and their loop points, kept with the sum for the next render
    # (--force makes them again, and measures every stem again)
    kept_takes = KeptTakes(p.directory / sumcache.CACHE_DIR / sumcache.TAKES_DIR) \
        if keeps_sum else None
    if output.force and kept_takes is not None:
        kept_takes.clear()
    scaled = cached if not output.force else None  # whose stem figures a volume edit scales
    if scaled is not None:
        _drop_untrue_levels(p, scaled, kept, level_free)
    old, to_read = sumcache.plan_update(cached, kept, p.keys, p.previous, p.directory, out)
    from_files = set(to_read)  # kept stems the sum takes as their files read back
    # One stem changed (an edit): the sum is updated and measured in the pass that renders it.
    one_pass = old is not None and sum(n not in kept for n in p.keys) == 1
    # Where only its volume changed, the stem at its earlier volume is taken out of the sum as
    # the new one goes in (``render_element``'s ``replaces``), to the bit: its earlier file is
    # not read back (nor its rounding left in the sum).
    replaced = {n: 10 ** (scaled.levels[n]["volume_db"] / 20) for n in (old or {})
                if one_pass and scaled is not None and n in level_free
                and scaled.holds_as_rendered(n, out) and scaled.volume_change(
                    n, level_free[n], p.arrangement.plan(n).volume_db) is not None}
    with contextlib.ExitStack() as stack:
        # the earlier files of the stems that change, opened before they are replaced
        earlier = stack.enter_context(contextlib.ExitStack())
        olds = [earlier.enter_context(sumcache.open_stem(path, out, replaced=True))
                for n, path in (old or {}).items() if n not in replaced]
        if not keeps_sum:
            sumcache.drop(p.directory)
            mix = Bus.temporary(out.channels, out.frames + p.overhang, p.directory)
        else:
            mix = sumcache.open_bus(p.directory, out, reuse=old is not None)
        stack.enter_context(mix)
        # work beside the main thread's (its last tasks done before the files above close)
        pool = stack.enter_context(ThreadPoolExecutor(2))
        # An edit's sum is updated and measured in the pass that renders the stem. Else the
        # earlier stems leave the sum on another core while the takes are conformed, and the
        # sum is measured once complete.
        update = None
        if one_pass:
            adds = [stack.enter_context(sumcache.open_stem(path, out))
                    for path in to_read.values()]
            update = stack.enter_context(sumcache.Update(
                mix, olds, adds, out.sample_rate, pool,
                _peak_floor(p, cached, old or {}, to_read, level_free),
                measure=not m.effects))  # the master measures its effects' output
            to_read = {}
        taken_out = pool.submit(sumcache.subtract, mix, olds) \
            if olds and update is None else None
        present: list[str] = []
        for name in p.keys:
            d = p.decisions[name]
            if name in kept:
                present.append(name)
                continue
            audio = element_takes(p.sources[name], cache, kept_takes)
            if audio is None:
                warnings.append(RenderWarning(
                    "takes", f"{name} has no take yet (not generated: excluded by --only); "
                    f"left out of the mix", name))
                continue
            present.append(name)
            plan = p.arrangement.plan(name)
            # a stem that changed only in volume is measured by scaling its earlier figures
            levels = None if scaled is None else scaled.known_levels(
                name, level_free[name], plan.volume_db, out.sample_rate)
            jobs.append(StemJob(plan, audio, p.path(name) if d.write else None,
                                out.sample_rate, scene.duration, levels,
                                _kept_loops(kept_takes, p.sources[name]), replaced.get(name)))
        for j in jobs:  # outside --only: mixed anew, but its older file stays as it was
            if j.path is None and p.path(j.plan.name).exists():
                warnings.append(RenderWarning(
                    "render", f"{j.plan.name}: {p.path(j.plan.name).relative_to(p.directory)} "
                    f"is from an earlier render and not rewritten (--only), so the stems no "
                    f"longer sum to the mix; render without --only to rewrite it", j.plan.name))
        if taken_out is not None:
            taken_out.result()
        workers = choose_workers(len(jobs), scene.duration, output.jobs)
        measures = render_stems(jobs, mix if update is None else update, out.sample_rate,
                                out.bit_depth, workers, p.directory, out.frames)
        if kept_takes is not None:
            for j in jobs:
                _keep_loops(kept_takes, p.sources[j.plan.name], j.loops,
                            measures[j.plan.name].loops)
        if update is not None:
            update.complete()
        # the earlier files are read to their ends: closed on another thread as the sum's
        # measuring ends. Replaced by the new stems, their last close frees their blocks on
        # the disk: 20 ms for a 10-minute stereo stem, which the render need not wait for.
        closed = pool.submit(earlier.close) if olds else None
        measured = None if update is None else update.finish()
        mix.fold(out.frames)  # a loopable mix: what rings past the end, onto the start
        written = {j.plan.name for j in jobs if j.path is not None}
        for name in written:  # metadata, before the records take the files' sizes
            tag_file(p.path(name), element_tags(
                p.arrangement.scene, p.arrangement.plan(name), p.sources[name], name,
                p.keys[name],
                loudness_lufs=measures[name].loudness_lufs,
                true_peak_dbtp=measures[name].true_peak_dbtp))
        for path in to_read.values():
            add_stem_file(path, mix)
        # the sum is measured here, in two threads (the master need not read it first),
        # unless master effects change it first
        if measured is None and not m.effects:
            measured = measure_sum(mix, out.sample_rate, pool)
        # the new stems' overviews for the page: gathered as they were written, else read
        # while the master works (after the measuring, whose true peak runs on these threads)
        ahead = [pool.submit(overview_of, p.directory, p.path(n), p.keys[n],
                             measures[n].overview) for n in written]
        if not out.float_stems:
            warnings += [note for n in sorted(written)
                         if (note := clipping_warning(measures[n], out.fmt)) is not None]
        records = [_stem_record(p, name, measures.get(name), name in written, generated, cache)
                   for name in present]
        pre_lufs = _pre_master_lufs(mix, out.frames, out.sample_rate) if m.effects else None
        forget_cached(mix_path)  # replaced, never read: its pages are the new one's
        # an mp3 or ogg is measured as it decodes, and trimmed to keep the ceiling there
        with MasterFile(mix_path, out.sample_rate, out.channels, out.frames, out.bit_depth,
                        m.ceiling, p.directory) as w:
            # a lossless mix's overview for the page, from the blocks as they are written
            # rather than read back (the page shows whole dB: the file's rounding can tip a
            # bin lying on a half dB to the next)
            seen = None if w.lossy else OverviewAccumulator(out.frames, out.channels)

            def sink(block: np.ndarray) -> None:
                if seen is not None:
                    seen.add(block)
                w.write(block)

            report = master_bus(mix, out.sample_rate, m.loudness, m.ceiling, tuple(m.effects),
                                sink, p.directory, loop=p.wrap > 0,
                                max_limiting_db=m.max_limiting, elements=_levels(records),
                                measured_sum=measured, keep_sum=keeps_sum)
        if keeps_sum:
            sumcache.save(p.directory, mix, out, {n: p.keys[n] for n in present},
                          cached.edits + 1 if old is not None and cached else 0,
                          {n: p.path(n) for n in present},
                          _levels_kept(p, present, measures, cached, level_free,
                                       from_files),
                          None if measured is None else measured.loudness.sample_peak)
            assert kept_takes is not None
            kept_takes.keep_only(list(p.sources.values()))
        if closed is not None:
            closed.result()
    warnings.extend(report.warnings)
    if w.decoded is not None and w.decoded.true_peak_dbtp > m.ceiling:
        warnings.append(RenderWarning(
            "master", f"the {out.fmt} mix decodes at {w.decoded.true_peak_dbtp:.2f} dBTP, over "
            f"the {m.ceiling:.1f} dBTP ceiling even trimmed by {-w.decoded.trim_db:.2f} dB; "
            f"lower the ceiling or write wav or flac", None, w.decoded.true_peak_dbtp,
            m.ceiling, w.decoded.true_peak_dbtp))
    lufs, peak = (report.output_lufs, report.true_peak_dbtp) if w.decoded is None else \
        (w.decoded.loudness_lufs, w.decoded.true_peak_dbtp)
    tag_file(mix_path, mix_tags(p.arrangement, p.model, p.mix_key, lufs, peak))
    remove_stale(p.previous, p.directory, {mix_path, *map(p.path, p.keys)})
    mix_record = MixRecord(mix_path.name, db(lufs), db(peak),
                           db(report.input_lufs if pre_lufs is None else pre_lufs),
                           round(report.gain_db, 3),
                           round(report.limiter_reduction_db, 3), m.loudness, m.ceiling,
                           p.mix_key, mix_path.stat().st_size, m.max_limiting,
                           db(report.input_plr_db), report.blocked_by,
                           db(report.blocked_by_plr_db),
                           None if w.decoded is None else round(w.decoded.trim_db, 3))
    manifest = render_manifest(p.arrangement, p.model, out.fmt,
                               written_bit_depth(out.fmt, out.bit_depth), output.only,
                               mix_record, records, warnings)
    manifest_path = p.directory / "manifest.json"
    write_notice(p.directory, manifest.licences)
    manifest.write(manifest_path)
    overviews = dict(f.result() for f in ahead)
    if seen is not None and seen.pos == out.frames:
        rel, ov = overview_of(p.directory, mix_path, p.mix_key, seen.result(out.sample_rate))
        overviews[rel] = ov
    write_page(p.directory, overviews)
    return RenderResult(manifest, p.directory, manifest_path, False)


def _peak_floor(p: _Plan, cached: sumcache.CachedSum | None, old: dict[str, Path],
                to_read: dict[str, Path], level_free: dict[str, str]) -> float:
    """A level the updated sum reaches, where the edit is one stem's volume alone (0 else)."""
    if cached is None or to_read or len(old) != 1:
        return 0.0
    [name] = old
    if name not in level_free:  # removed (another element is new): not a volume edit
        return 0.0
    return cached.peak_after(name, level_free[name], p.arrangement.plan(name).volume_db,
                             sumcache.rounding_step(p.out))


def _kept_loops(kept: KeptTakes | None, source: Source) -> FoundLoops | None:
    """The loop points an earlier render found in the element's kept takes."""
    if kept is None:
        return None
    return {(int(t), int(xf)): LoopPoints(int(s), int(e), float(r))
            for t, xf, s, e, r in kept.loops(source, MIXER_VERSION)}


def _keep_loops(kept: KeptTakes, source: Source, before: FoundLoops | None,
                now: FoundLoops | None) -> None:
    """Keep the loop points the stem was made with, where they are not kept already."""
    if now and now != before:
        kept.save_loops(source, MIXER_VERSION, [[t, xf, p.start, p.end, p.correlation]
                                                for (t, xf), p in sorted(now.items())])


def _levels_kept(p: _Plan, present: list[str], measures: dict[str, StemMeasure],
                 cached: sumcache.CachedSum | None,
                 level_free: dict[str, str],
                 from_files: set[str]) -> dict[str, dict[str, Any]]:
    """Each stem's measurements for the sum's index, with its level-free key and volume: those
    of the stems rendered now, and the cached ones of the stems kept as they were. Those the
    sum holds as rendered are marked so (``sumcache.RENDERED``), not those it read from their
    files (``from_files``): a volume edit takes out of the sum what it holds."""
    out: dict[str, dict[str, Any]] = {}
    for name in present:
        m = measures.get(name)
        if m is not None and m.figures is not None:
            out[name] = {"level_free": level_free[name],
                         "volume_db": p.arrangement.plan(name).volume_db, **m.figures,
                         sumcache.RENDERED: True}
        elif cached is not None and name in cached.levels \
                and cached.levels[name].get("level_free") == level_free[name]:
            out[name] = cached.levels[name]
            if name in from_files:
                out[name] = {k: v for k, v in out[name].items() if k != sumcache.RENDERED}
    return out


def _drop_untrue_levels(p: _Plan, cached: sumcache.CachedSum, kept: dict[str, Path],
                        level_free: dict[str, str]) -> None:
    """Forget the index's levels of a stem rendered now where its volume there is not the one
    the stem's key in the sum was made at (a hand-edited or damaged index): a volume edit
    would otherwise scale the stem's figures from it, and take the stem out of the sum at it.
    One key per stem whose volume alone changed (the only ones those levels serve)."""
    for name in p.keys:
        got = cached.levels.get(name)
        if name in kept or not isinstance(got, dict) \
                or got.get("level_free") != level_free[name] or "volume_db" not in got:
            continue
        volume = got["volume_db"]
        if isinstance(volume, bool) or not isinstance(volume, int | float) or stem_key(
                replace(p.arrangement.plan(name), volume_db=float(volume)), p.sources[name],
                p.out) != cached.stems.get(name):
            del cached.levels[name]


def _keeps_sum(p: _Plan, output: OutputOptions, kept: dict[str, Path]) -> bool:
    """Whether this render keeps its pre-master sum for the next (``sumcache``): the sum is
    then exactly the stems on disk (lossless, every stem rendered is written, no loop's tail
    folded in)."""
    return p.out.fmt in LOSSLESS and not p.wrap and output.only is None \
        and all(d.write for n, d in p.decisions.items() if n not in kept)


def _pre_master_lufs(mix: Bus, frames: int, sample_rate: int) -> float:
    """The loudness of the sum before the master effects (``master_bus`` measures after them,
    which is what its gain works from)."""
    meter = Meter(sample_rate, mix.channels, true_peak=False)
    for start in range(0, frames, 1 << 16):
        meter.add(mix.read(start, min(1 << 16, frames - start)))
    return meter.finish().integrated_loudness()


def _levels(records: list[StemRecord]) -> tuple[ElementLevels, ...]:
    """What each stem brings to the sum, for the master to say whose peaks stand in its way."""
    def level(x: float | None) -> float:
        return -math.inf if x is None else x

    return tuple(ElementLevels(r.element, level(r.loudness_lufs), level(r.true_peak_dbtp))
                 for r in records)


def _stem_record(p: _Plan, name: str, measure: StemMeasure | None, written: bool,
                 generated: frozenset[str], cache: TakeCache) -> StemRecord:
    d = p.decisions[name]
    if d.keep is not None:
        return kept_record(d.keep)
    assert measure is not None
    plan = p.arrangement.plan(name)
    path = p.path(name)
    seams = list(measure.seams)  # the stem stage's, from the loop points it rendered with
    return stem_record(plan, p.sources[name], str(path.relative_to(p.directory)) if written
                       else None, p.keys[name], measure.loudness_lufs, measure.true_peak_dbtp,
                       measure.sample_peak, path.stat().st_size if written else 0,
                       generated.__contains__, cache.generated_with, seams)


LOOPABLE_CROSSFADE_S = 2.0  # --loopable on a scene that does not set master.loopable


def _export(p: _Plan, r: RenderResult, cache: TakeCache, want: ExportRequest) -> RenderResult:
    """Write the loop files and pools asked for (and keep the earlier ones still current),
    recording them in the manifest; from the element's takes, independent of the mix."""
    done = write_exports(p.arrangement, p.sources, cache, p.directory,
                         p.out.bit_depth, p.previous.exports if p.previous else (), want)
    manifest = r.manifest
    if done.records != manifest.exports:
        manifest = replace(manifest, exports=done.records)
        manifest.write(r.manifest_path)
    return replace(r, manifest=manifest, exported=done.written, export_warnings=done.warnings)


def select_scenes(source: str | Path | Scene, variant: str | None = None,
                  all_variants: bool = False) -> list[Scene]:
    base = source if isinstance(source, Scene) else load_scene(source)
    if all_variants:
        if isinstance(source, Scene):
            raise SoundscapeError("all_variants needs a scene file")
        return [base] + [load_scene(source, v) for v in base.variants]
    if variant:
        if isinstance(source, Scene):
            raise SoundscapeError("variant needs a scene file")
        return [load_scene(source, variant)]
    return [base]


def render(sources: str | Path | Scene | Sequence[str | Path | Scene], *,
           variant: str | None = None, all_variants: bool = False,
           out: str | Path = "renders", fmt: str = "wav", bit_depth: int | None = None,
           only: Sequence[str] | None = None, model: str | None = None, device: str = "auto",
           cache_dir: str | Path | None = None, max_batch: int = 8, log: Log | None = None,
           progress: Progress | None = None, jobs: int | None = None,
           force: bool = False, precision: str = "auto", loopable: bool = False,
           loops: bool = False, export: Sequence[str] = (),
           cluster: ClusterSpec | None = None,
           commercial: bool = False) -> list[RenderResult]:
    """Render scenes end to end; returns one ``RenderResult`` per scene or variant.

    Only what changed is redone: takes missing from the cache are generated (shared between
    scenes and variants, generated once), stems whose inputs changed are rendered, the others
    are kept, and a render with nothing changed writes nothing (``up_to_date``). ``only``:
    generate and write only these elements' takes and stems. ``force``: render every stem
    again. ``jobs``: processes that render stems (None: one per CPU core for long scenes).
    ``precision``: auto, fp32, bf16 or fp16 for the language model (``generate.precision``);
    not part of a take's identity, recorded per take in the manifest. ``loopable``: make
    every mix loop seamlessly (``master.loopable``; scenes that set it keep their crossfade).
    ``loops``: write each looped element's loop file (``loops/<element>.wav``); ``export``:
    also ``"pools"`` (each scattered element's one-shots and ``pools/pools.json``), ``"loops"``
    (as ``loops``). ``cluster``: generate the missing takes on that Ray cluster
    (``takes.cluster``). ``commercial``: refuse models whose licence forbids commercial use,
    before anything is generated (as ``commercial: true`` in a scene). The keywords are
    ``GenerationOptions`` and ``OutputOptions`` spelled out; ``render_scenes`` takes those
    values.
    """
    gen = GenerationOptions(model, device, Path(cache_dir) if cache_dir else None, max_batch,
                            precision, log or quiet, progress, cluster, commercial)
    output = OutputOptions(Path(out), fmt, bit_depth, frozenset(only) if only else None, force,
                           jobs, loopable, loops, tuple(export))
    if isinstance(sources, str | Path | Scene):
        sources = [sources]
    scenes = [s for src in sources for s in select_scenes(src, variant, all_variants)]
    return render_scenes(scenes, gen, output)


def render_scenes(scenes: Sequence[Scene], gen: GenerationOptions,
                  output: OutputOptions) -> list[RenderResult]:
    """Render loaded scenes (and variants) in this order: plan every one (sources, arrangement,
    what is current), check the outputs and resources, generate the missing takes of all of
    them at once, then mix, master, write and export each under its folder's lock."""
    want = ExportRequest.of(output.loops, output.export)
    if output.loopable:
        scenes = [s.loopable_copy(LOOPABLE_CROSSFADE_S) for s in scenes]
    if output.out.exists() and not output.out.is_dir():
        raise SoundscapeError(f"--out {output.out} is a file; give a folder for the renders")
    only = output.only
    if only:
        _check_only(scenes, only)
    models = Models(gen.model, gen.log)
    for s in scenes:  # pinned first: a missing or gated model is one line about the model;
        for name, e in s.elements.items():  # a folder the scene names is one about the scene
            if e.prompt is None:
                continue
            model = models.name_for(s, name)
            folder = model.startswith((".", "/", "~")) or model.count("/") > 1
            with _about(s) if folder and model != gen.model else contextlib.nullcontext():
                models.of_element(s, name)
    plans = []
    for s in scenes:
        with _about(s):
            name = resolve(gen.model or s.model, s.base_dir).public_name
            plans.append(_plan(s, models, name, output))
    check_commercial(plans, gen.commercial)
    if want:
        check_request([p.arrangement for p in plans], want)
    for p in plans:  # before anything is generated or allocated (an up-to-date render needs
        if p.redo_mix:  # neither, nor pedalboard's import to ask the encoder)
            with _about(p.scene):
                _check_outputs(p, output)
    cache = TakeCache(gen.cache_dir)
    generated: set[str] = set()
    shared: list[RenderWarning] = []
    wanted = [t.request for p in plans for n, src in p.sources.items() if p.needs_audio(n)
              and (only is None or n in only) for t in src.takes]
    done, warns = generate_missing(wanted, cache, models, gen)
    generated |= done
    shared += warns
    results = []
    claimed: set[str] = set()  # a take shared by variants was generated for the first of them
    for p in plans:
        try:
            with _about(p.scene):
                results.append(_write(p, models, cache, frozenset(generated - claimed),
                                      tuple(shared), gen, output,
                                      want.with_scene(p.arrangement.scene)))
        except OSError as e:
            raise RenderError(f"{p.scene.label}: cannot write outputs: {e}") from None
        claimed |= {t.request.key for src in p.sources.values() for t in src.takes}
    return results


def _check_only(scenes: Sequence[Scene], only: frozenset[str]) -> None:
    """One error for an --only name that no scene of the render has: variants of one scene are
    one scene here (a name in any of them is fine), so --all-variants says what a single render
    says; of several scene files, a name need only be in one."""
    every = list(dict.fromkeys(n for s in scenes for n in s.elements))
    unknown = sorted(only - set(every))
    if unknown:
        labels = " or ".join(dict.fromkeys(s.name for s in scenes))
        raise SoundscapeError(f"--only: {labels} has no element "
                              f"{', '.join(map(repr, unknown))}; elements: {', '.join(every)}")


def _check_outputs(p: _Plan, output: OutputOptions) -> None:
    """Refuse, before anything is generated, an output the encoder cannot write or a render
    that cannot fit in memory or on disk."""
    problem = output_problem(output.fmt, p.out.sample_rate, p.out.channels, output.bit_depth)
    if problem is not None:
        raise SoundscapeError(f"{p.scene.label}: {problem}")
    written = sum(d.write for d in p.decisions.values())
    workers = choose_workers(len(p.keys), p.scene.duration, output.jobs)
    budget.check(p.scene.label, budget.estimate(
        p.arrangement, p.out.frames, p.out.channels, output.fmt, output.bit_depth, written,
        workers, tuple(p.scene.master.effects)), p.directory)


def check_commercial(plans: list[_Plan], commercial: bool) -> None:
    """With ``--commercial`` (or ``commercial: true`` in a scene), refuse elements whose
    model's licence forbids commercial use, before anything is generated.

    Raises:
        SoundscapeError: one line naming the elements, their engine and licence.
    """
    bad: dict[str, list[str]] = {}
    for p in plans:
        if not (commercial or p.scene.commercial):
            continue
        for name, src in p.sources.items():
            for t in src.takes[:1]:
                spec = ENGINES[t.request.engine]
                if not spec.licence.commercial:
                    bad.setdefault(f"{spec.title} ({spec.licence.name}, non-commercial use "
                                   f"only)", []).append(f"{p.scene.label}/{name}")
    if bad:
        what, names = next(iter(bad.items()))
        raise SoundscapeError(
            f"commercial use was asked for (--commercial or commercial: true) but "
            f"{', '.join(names)} would be made with {what}; give those elements a model whose "
            f"licence allows it, e.g. model: stable-audio-open-small, or drop --commercial")


def write_notice(directory: Path, licences: tuple[dict, ...]) -> None:
    """``NOTICE.txt`` beside the outputs when a licence asks for a notice (Stable Audio:
    "Powered by Stability AI"); an earlier one goes when it no longer applies."""
    text = notice_text(licences)
    path = directory / NOTICE_FILE
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    atomic_write_text(path, text)


def _write_locked(p: _Plan, models: Models, cache: TakeCache, generated: frozenset[str],
                  shared: tuple[RenderWarning, ...], gen: GenerationOptions,
                  output: OutputOptions, want: ExportRequest) -> RenderResult:
    """``_write``'s work, under the folder's lock."""
    for folder in (p.directory, p.directory / "stems", p.directory / sumcache.CACHE_DIR,
                   p.directory / sumcache.CACHE_DIR / sumcache.TAKES_DIR):
        remove_stale_temps(folder)
    p = _plan(p.scene, models, p.model, output, directory=p.directory)
    if not p.redo_mix and p.previous is not None:
        same = RenderResult(p.previous, p.directory, p.directory / "manifest.json", True)
        return _export(p, same, cache, want) if want else same
    wanted = [t.request for n, src in p.sources.items() if p.needs_audio(n)
              and (output.only is None or n in output.only) for t in src.takes]
    done, warns = generate_missing(wanted, cache, models, gen)
    if gen.progress is not None:  # servers report it, and may stop the job here
        gen.progress(f"mix {p.scene.label}", 0, 1)
    mixed = _mix(p, cache, generated | done, shared + tuple(warns), output)
    if gen.progress is not None:
        gen.progress(f"mix {p.scene.label}", 1, 1)
    return _export(p, mixed, cache, want)


def _write(p: _Plan, models: Models, cache: TakeCache, generated: frozenset[str],
           shared: tuple[RenderWarning, ...], gen: GenerationOptions, output: OutputOptions,
           want: ExportRequest = NO_EXPORTS) -> RenderResult:
    """The write phase of one scene or variant, under its output folder's lock.

    Another render of the same folder may have finished since ``p`` was planned, so the plan is
    made again under the lock (against the manifest now on disk); takes it then needs that are
    still missing are generated here, and what that generation says belongs to this scene
    alone. Temporary files that killed renders left go first.
    """
    created = not p.directory.exists()
    p.directory.mkdir(parents=True, exist_ok=True)
    try:
        with locked(p.directory):
            try:
                return _write_locked(p, models, cache, generated, shared, gen, output, want)
            except BaseException:
                # The folder is this render's alone while it holds the lock, and its writers and
                # workers have stopped (killed on an interrupt): every temporary file still in it
                # was caught between its creation and its cleanup, so all of them go.
                for folder in (p.directory, p.directory / "stems",
                               p.directory / sumcache.CACHE_DIR,
                               p.directory / sumcache.CACHE_DIR / sumcache.TAKES_DIR):
                    remove_stale_temps(folder, max_age_s=-1.0)
                raise
    except BaseException:
        if created:  # leave no empty folder behind a failed first render
            with contextlib.suppress(OSError):
                p.directory.rmdir()
        raise
