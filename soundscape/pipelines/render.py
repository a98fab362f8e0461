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
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..arrange import Arrangement, arrange
from ..audio_io import AtomicAudioWriter, output_problem, remove_stale_temps
from ..dsp.bus import Bus
from ..errors import RenderError, SoundscapeError
from ..generate.models import ModelRef, resolve
from ..locks import locked
from ..master import ElementLevels, master_bus
from ..mixer import budget as resources
from ..mixer.workers import StemJob, StemMeasure, add_stem_file, choose_workers, render_stems
from ..notices import RenderWarning
from ..outputs.exports import NO_EXPORTS, ExportRequest, check_request, write_exports
from ..outputs.incremental import (
    Decision,
    Output,
    decide,
    mix_is_current,
    mix_key,
    stale_files,
    stem_key,
    summable,
)
from ..outputs.manifest import (
    Manifest,
    MixRecord,
    StemRecord,
    TakeRecord,
    db,
    placement_json,
    read_manifest,
    versions,
)
from ..outputs.page import loop_extras, write_page
from ..outputs.tags import element_tags, mix_tags, tag_file
from ..scene import Scene, load_scene
from ..takes.conform import element_takes
from ..takes.plan import Log, Progress, Source, plan_sources
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


def output_dir(out: Path, scene: Scene) -> Path:
    d = out / scene.name
    return d / scene.variant if scene.variant else d


def _plan(scene: Scene, ref: ModelRef, model: str, out_root: Path, fmt: str,
          bit_depth: int | None, only: set[str] | None, force: bool,
          directory: Path | None = None) -> _Plan:
    sources = plan_sources(scene, ref)
    arr = arrange(scene, {n: s.length_s for n, s in sources.items()})
    m = scene.master
    out = Output(scene.sample_rate, scene.channels, int(round(scene.duration * scene.sample_rate)),
                 fmt, bit_depth)
    directory = directory or output_dir(out_root, scene)
    keys = {p.name: stem_key(p, sources[p.name], out) for p in arr.elements}
    mkey = mix_key(keys, {"effects": [repr(fx) for fx in m.effects], "loudness": m.loudness,
                          "ceiling": m.ceiling, "loopable": m.loopable,
                          "max_limiting": m.max_limiting}, out)
    previous = read_manifest(directory / "manifest.json")
    paths = {n: directory / "stems" / f"{n}.{fmt}" for n in keys}
    decisions = decide(list(keys), keys, paths, previous, directory, only, force)
    redo = (any(d.render for d in decisions.values())
            or not mix_is_current(previous, mkey, directory)
            or bool(stale_files(previous, directory,
                                {*paths.values(), directory / f"mix.{fmt}"}))
            or not (directory / "manifest.json").is_file())
    return _Plan(scene, model, sources, arr, out, directory, keys, mkey, decisions, previous,
                 redo)


def _stem_record(p: _Plan, name: str, measure: StemMeasure | None, written: bool,
                 generated: set[str], cache: TakeCache,
                 audio: list[np.ndarray] | None) -> StemRecord:
    d = p.decisions[name]
    if d.keep is not None:
        return replace(d.keep, rendered=False,
                       takes=tuple(replace(t, generated=False) for t in d.keep.takes))
    plan = p.arrangement.plan(name)
    src = p.sources[name]
    path = p.path(name)
    assert measure is not None
    return StemRecord(
        element=name, source="file" if src.is_file else "prompt", file=src.file,
        placements=tuple({**placement_json(lp), **loop_extras(audio[lp.take], lp,
                                                                p.out.sample_rate, p.out.frames)}
                         if audio is not None else placement_json(lp) for lp in plan.loops)
        + tuple(map(placement_json, plan.clips)),
        volume_db=db(plan.volume_db),
        automation=tuple({"time_s": k.time_s, "level_db": k.level_db} for k in plan.automation),
        takes=tuple(TakeRecord.of(t, t.request.key in generated,
                                  cache.generated_with(t.request.key)) for t in src.takes),
        stem=str(path.relative_to(p.directory)) if written else None,
        loudness_lufs=db(measure.loudness_lufs), true_peak_dbtp=db(measure.true_peak_dbtp),
        sample_peak=round(measure.sample_peak, 6), key=p.keys[name] if written else "",
        rendered=True, bytes=path.stat().st_size if written else 0)


def _forget_rewritten(p: _Plan) -> None:
    """Before any file is replaced, drop the earlier manifest's records of the stems and the mix
    this render rewrites: killed half-way, it then leaves a manifest that names only files it
    has not touched, and the next render keeps those and renders the rest."""
    if p.previous is None:
        return
    rewritten = {n for n, d in p.decisions.items() if d.keep is None and d.write}
    interim = replace(p.previous, elements=tuple(
        e for e in p.previous.elements if e.element not in rewritten),
        mix=replace(p.previous.mix, key=""))
    interim.write(p.directory / "manifest.json")


def _mix(p: _Plan, cache: TakeCache, generated: set[str], shared: list[RenderWarning],
         only: set[str] | None, jobs_requested: int | None) -> RenderResult:
    """Conform, render the stems that changed, sum the kept ones, master and write."""
    scene, out = p.scene, p.out
    warnings = list(p.arrangement.warnings) + shared
    jobs: list[StemJob] = []
    audio_of: dict[str, list[np.ndarray]] = {}
    kept: list[Path] = []
    present: list[str] = []
    for name in p.keys:
        d = p.decisions[name]
        if d.keep is not None and p.sums(d.keep):
            kept.append(p.directory / d.keep.stem)  # type: ignore[operator]
            present.append(name)
            continue
        audio = element_takes(scene, p.sources[name], cache)
        if audio is None:
            warnings.append(RenderWarning("takes", f"{name} has no take yet (not generated: "
                                          f"excluded by --only); left out of the mix", name))
            continue
        present.append(name)
        audio_of[name] = audio
        jobs.append(StemJob(p.arrangement.plan(name), audio,
                            p.path(name) if d.write else None, out.sample_rate,
                            scene.duration))
    _forget_rewritten(p)
    workers = choose_workers(len(jobs), scene.duration, jobs_requested)
    mix_path = p.directory / f"mix.{out.fmt}"
    with Bus.temporary(out.channels, out.frames + p.wrap, p.directory) as mix:
        measures = render_stems(jobs, mix, out.sample_rate, out.bit_depth, workers,
                                p.directory, out.frames)
        mix.fold(out.frames)  # a loopable mix: what rings past the end, onto the start
        for path in kept:
            add_stem_file(path, mix)
        written = {j.plan.name for j in jobs if j.path is not None}
        for name in written:  # metadata, before the records take the files' sizes
            tag_file(p.path(name), element_tags(
                scene, name, p.sources[name], name, p.keys[name],
                loudness_lufs=measures[name].loudness_lufs,
                true_peak_dbtp=measures[name].true_peak_dbtp))
        records = []
        for name in present:
            measure = measures.get(name)
            if name in written and measure is not None and measure.sample_peak > 1.0 \
                    and not out.float_stems:
                warnings.append(RenderWarning(
                    "mix", f"stem {name} peaks at +{20 * math.log10(measure.sample_peak):.1f} "
                    f"dBFS before the master and is clipped in its {out.fmt} file (the mix is "
                    f"not); lower its volume or write stems as 32-bit float wav "
                    f"(--bit-depth 32)", name, None, 1.0, measure.sample_peak))
            records.append(_stem_record(p, name, measure, name in written, generated, cache,
                                        audio_of.get(name)))
        m = scene.master
        with AtomicAudioWriter(mix_path, out.sample_rate, out.channels, out.bit_depth,
                               background=True) as w:
            report = master_bus(mix, out.sample_rate, m.loudness, m.ceiling, tuple(m.effects),
                                w.write, p.directory, loop=p.wrap > 0,
                                max_limiting_db=m.max_limiting, elements=_levels(records))
    warnings.extend(report.warnings)
    tag_file(mix_path, mix_tags(scene, p.model, p.mix_key, report.output_lufs,
                                report.true_peak_dbtp))
    for stale in stale_files(p.previous, p.directory, {mix_path, *map(p.path, p.keys)}):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    n_gen = sum(r.generated for r in records)
    n_takes = sum(len(r.takes) for r in records)
    manifest = Manifest(
        scene=scene.name, variant=scene.variant,
        scene_file=str(scene.path) if scene.path else None, duration_s=scene.duration,
        sample_rate=out.sample_rate, channels=out.channels, format=out.fmt,
        bit_depth=out.bit_depth, model=p.model, seed=scene.seed,
        rendered=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        only=tuple(sorted(only)) if only else None,
        mix=MixRecord(mix_path.name, db(report.output_lufs), db(report.true_peak_dbtp),
                      db(report.input_lufs), round(report.gain_db, 3),
                      round(report.limiter_reduction_db, 3), m.loudness, m.ceiling,
                      p.mix_key, mix_path.stat().st_size, m.max_limiting,
                      db(report.input_plr_db), report.blocked_by,
                      db(report.blocked_by_plr_db)),
        elements=tuple(records), generated=n_gen, cached=n_takes - n_gen,
        warnings=tuple(warnings), versions=versions())
    manifest_path = p.directory / "manifest.json"
    manifest.write(manifest_path)
    write_page(p.directory)
    return RenderResult(manifest, p.directory, manifest_path, False)


def _levels(records: list[StemRecord]) -> tuple[ElementLevels, ...]:
    """What each stem brings to the sum, for the master to say whose peaks stand in its way."""
    def level(x: float | None) -> float:
        return -math.inf if x is None else x

    return tuple(ElementLevels(r.element, level(r.loudness_lufs), level(r.true_peak_dbtp))
                 for r in records)


LOOPABLE_CROSSFADE_S = 2.0  # --loopable on a scene that does not set master.loopable


def loop_scene(scene: Scene, crossfade_s: float) -> Scene:
    """``scene`` with a loopable mix (``master.loopable``), unless it already has one.

    Raises:
        SoundscapeError: the scene is shorter than twice the crossfade.
    """
    if scene.master.loopable:
        return scene
    if 2 * crossfade_s > scene.duration:
        raise SoundscapeError(f"--loopable: {scene.label} lasts {scene.duration:g} s; a loopable "
                              f"mix crossfades its end into its start over {crossfade_s:g} s and "
                              f"needs at least {2 * crossfade_s:g} s")
    return scene.model_copy(update={"master": scene.master.model_copy(
        update={"loopable": crossfade_s})})


def _export(p: _Plan, r: RenderResult, cache: TakeCache, want: ExportRequest) -> RenderResult:
    """Write the loop files and pools asked for (and keep the earlier ones still current),
    recording them in the manifest; from the element's takes, independent of the mix."""
    done = write_exports(p.scene, p.arrangement, p.sources, cache, p.directory,
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
           loops: bool = False, export: Sequence[str] = ()) -> list[RenderResult]:
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
    (as ``loops``).
    """
    log = log or (lambda s: None)
    want = ExportRequest.of(loops, export)
    if isinstance(sources, str | Path | Scene):
        sources = [sources]
    scenes = [s for src in sources for s in select_scenes(src, variant, all_variants)]
    if loopable:
        scenes = [loop_scene(s, LOOPABLE_CROSSFADE_S) for s in scenes]
    if Path(out).exists() and not Path(out).is_dir():
        raise SoundscapeError(f"--out {out} is a file; give a folder for the renders")
    only_set = set(only) if only else None
    if only_set:
        for s in scenes:
            unknown = sorted(only_set - set(s.elements))
            if unknown and len(scenes) == 1:
                raise SoundscapeError(f"--only: {s.label} has no element "
                                      f"{', '.join(map(repr, unknown))}; elements: "
                                      f"{', '.join(s.elements)}")
    refs: dict[str, ModelRef] = {}
    ref_of: dict[str, ModelRef] = {}
    plans = []
    for s in scenes:
        name = model or s.model
        if name not in refs:
            refs[name] = resolve(name, s.base_dir)
            ref_of[refs[name].name] = refs[name]
        plans.append(_plan(s, refs[name], refs[name].name, Path(out), fmt, bit_depth, only_set,
                           force))
    if want:
        check_request([(p.scene, p.arrangement) for p in plans], want)
    for p in plans:  # before anything is generated or allocated (an up-to-date render needs
        if p.redo_mix:  # neither, nor pedalboard's import to ask the encoder)
            problem = output_problem(fmt, p.out.sample_rate, p.out.channels, bit_depth)
            if problem is not None:
                raise SoundscapeError(f"{p.scene.label}: {problem}")
            written = sum(d.write for d in p.decisions.values())
            workers = choose_workers(len(p.keys), p.scene.duration, jobs)
            resources.check(p.scene.label, resources.estimate(
                p.arrangement, p.out.frames, p.out.channels, fmt, bit_depth, written, workers,
                tuple(p.scene.master.effects)),
                p.directory)
    cache = TakeCache(cache_dir)
    generated: set[str] = set()
    shared: list[RenderWarning] = []
    for ref in refs.values():
        wanted = [t.request for p in plans if p.model == ref.name
                  for n, src in p.sources.items() if p.needs_audio(n)
                  and (only_set is None or n in only_set) for t in src.takes]
        done, warns = generate_missing(wanted, cache, ref, device, max_batch, log, progress,
                                       precision)
        generated |= done
        shared += warns
    results = []
    for p in plans:
        try:
            results.append(_write(p, ref_of[p.model], device, max_batch, log, progress, cache,
                                  generated, shared, only_set, force, jobs, precision,
                                  want.with_scene(p.scene)))
        except OSError as e:
            raise RenderError(f"{p.scene.label}: cannot write outputs: {e}") from None
    return results


def _write(p: _Plan, ref: ModelRef, device: str, max_batch: int, log: Log,
           progress: Progress | None, cache: TakeCache, generated: set[str],
           shared: list[RenderWarning], only: set[str] | None, force: bool,
           jobs: int | None, precision: str = "auto",
           want: ExportRequest = NO_EXPORTS) -> RenderResult:
    """The write phase of one scene or variant, under its output folder's lock.

    Another render of the same folder may have finished since ``p`` was planned, so the plan is
    made again under the lock (against the manifest now on disk); takes it then needs that are
    still missing are generated here. Temporary files that killed renders left go first.
    """
    created = not p.directory.exists()
    p.directory.mkdir(parents=True, exist_ok=True)
    try:
        with locked(p.directory):
            for folder in (p.directory, p.directory / "stems"):
                remove_stale_temps(folder)
            p = _plan(p.scene, ref, p.model, p.directory, p.out.fmt, p.out.bit_depth, only,
                      force, directory=p.directory)
            if not p.redo_mix and p.previous is not None:
                same = RenderResult(p.previous, p.directory, p.directory / "manifest.json", True)
                return _export(p, same, cache, want) if want else same
            wanted = [t.request for n, src in p.sources.items() if p.needs_audio(n)
                      and (only is None or n in only) for t in src.takes]
            done, warns = generate_missing(wanted, cache, ref, device, max_batch, log, progress,
                                           precision)
            generated |= done
            shared += warns
            return _export(p, _mix(p, cache, generated, shared, only, jobs), cache, want)
    except BaseException:
        if created:  # leave no empty folder behind a failed first render
            with contextlib.suppress(OSError):
                p.directory.rmdir()
        raise
