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
from ..master import master_bus
from ..mixer import budget
from ..mixer.loops import loop_seams
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
from ..outputs.exports import NO_EXPORTS, ExportRequest, check_request, write_exports
from ..outputs.incremental import (
    Decision,
    Output,
    decide,
    forget_rewritten,
    mix_is_current,
    mix_key,
    remove_stale,
    stale_files,
    stem_key,
    summable,
)
from ..outputs.manifest import (
    Manifest,
    MixRecord,
    StemRecord,
    db,
    kept_record,
    read_manifest,
    render_manifest,
    stem_record,
)
from ..outputs.page import write_page
from ..outputs.tags import element_tags, mix_tags, tag_file
from ..scene import Scene, load_scene
from ..takes.conform import element_takes
from ..takes.plan import Source, plan_sources
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


def _plan(scene: Scene, ref: ModelRef, model: str, output: OutputOptions,
          directory: Path | None = None) -> _Plan:
    """What one scene or variant needs: its sources, arrangement, keys, and per stem whether
    the earlier render's file is current; nothing is read but the earlier manifest."""
    fmt, bit_depth = output.fmt, output.bit_depth
    sources = plan_sources(scene, ref)
    arr = arrange(scene, {n: s.length_s for n, s in sources.items()})
    m = scene.master
    out = Output(scene.sample_rate, scene.channels, int(round(scene.duration * scene.sample_rate)),
                 fmt, bit_depth)
    directory = directory or output_dir(output.out, scene)
    keys = {p.name: stem_key(p, sources[p.name], out) for p in arr.elements}
    mkey = mix_key(keys, {"effects": [repr(fx) for fx in m.effects], "loudness": m.loudness,
                          "ceiling": m.ceiling, "loopable": m.loopable}, out)
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
    """Conform, render the stems that changed, sum the kept ones, master and write."""
    scene, out = p.scene, p.out
    warnings = [*p.arrangement.warnings, *shared]
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
        audio = element_takes(p.sources[name], cache)
        if audio is None:
            warnings.append(RenderWarning("takes", f"{name} has no take yet (not generated: "
                                          f"excluded by --only); left out of the mix", name))
            continue
        present.append(name)
        audio_of[name] = audio
        jobs.append(StemJob(p.arrangement.plan(name), audio,
                            p.path(name) if d.write else None, out.sample_rate,
                            scene.duration))
    forget_rewritten(p.previous, {n for n, d in p.decisions.items() if d.keep is None and d.write},
                     p.directory / "manifest.json")
    workers = choose_workers(len(jobs), scene.duration, output.jobs)
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
                p.arrangement.scene, p.arrangement.plan(name), p.sources[name], name,
                p.keys[name],
                loudness_lufs=measures[name].loudness_lufs,
                true_peak_dbtp=measures[name].true_peak_dbtp))
        if not out.float_stems:
            warnings += [note for n in sorted(written)
                         if (note := clipping_warning(measures[n], out.fmt)) is not None]
        records = [_stem_record(p, name, measures.get(name), name in written, generated, cache,
                                audio_of.get(name)) for name in present]
        m = scene.master
        with AtomicAudioWriter(mix_path, out.sample_rate, out.channels, out.bit_depth,
                               background=True) as w:
            report = master_bus(mix, out.sample_rate, m.loudness, m.ceiling, tuple(m.effects),
                                w.write, p.directory, loop=p.wrap > 0)
    warnings.extend(report.warnings)
    tag_file(mix_path, mix_tags(p.arrangement, p.model, p.mix_key, report.output_lufs,
                                report.true_peak_dbtp))
    remove_stale(p.previous, p.directory, {mix_path, *map(p.path, p.keys)})
    mix_record = MixRecord(mix_path.name, db(report.output_lufs), db(report.true_peak_dbtp),
                           db(report.input_lufs), round(report.gain_db, 3),
                           round(report.limiter_reduction_db, 3), m.loudness, m.ceiling,
                           p.mix_key, mix_path.stat().st_size)
    manifest = render_manifest(p.arrangement, p.model, out.fmt, out.bit_depth, output.only,
                               mix_record, records, warnings)
    manifest_path = p.directory / "manifest.json"
    manifest.write(manifest_path)
    write_page(p.directory)
    return RenderResult(manifest, p.directory, manifest_path, False)


def _stem_record(p: _Plan, name: str, measure: StemMeasure | None, written: bool,
                 generated: frozenset[str], cache: TakeCache,
                 audio: list[np.ndarray] | None) -> StemRecord:
    d = p.decisions[name]
    if d.keep is not None:
        return kept_record(d.keep)
    assert measure is not None
    plan = p.arrangement.plan(name)
    path = p.path(name)
    seams = None if audio is None else [
        loop_seams(audio[lp.take], lp, p.out.sample_rate, p.out.frames) for lp in plan.loops]
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
           cluster: ClusterSpec | None = None) -> list[RenderResult]:
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
    (``takes.cluster``). The keywords are ``GenerationOptions`` and ``OutputOptions`` spelled out;
    ``render_scenes`` takes those values.
    """
    gen = GenerationOptions(model, device, Path(cache_dir) if cache_dir else None, max_batch,
                            precision, log or quiet, progress, cluster)
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
        for s in scenes:
            unknown = sorted(only - set(s.elements))
            if unknown and len(scenes) == 1:
                raise SoundscapeError(f"--only: {s.label} has no element "
                                      f"{', '.join(map(repr, unknown))}; elements: "
                                      f"{', '.join(s.elements)}")
    refs: dict[str, ModelRef] = {}
    ref_of: dict[str, ModelRef] = {}
    plans = []
    for s in scenes:
        name = gen.model or s.model
        if name not in refs:
            refs[name] = resolve(name, s.base_dir)
            ref_of[refs[name].name] = refs[name]
        plans.append(_plan(s, refs[name], refs[name].name, output))
    if want:
        check_request([p.arrangement for p in plans], want)
    for p in plans:  # before anything is generated or allocated (an up-to-date render needs
        if p.redo_mix:  # neither, nor pedalboard's import to ask the encoder)
            _check_outputs(p, output)
    cache = TakeCache(gen.cache_dir)
    generated: set[str] = set()
    shared: list[RenderWarning] = []
    for ref in refs.values():
        wanted = [t.request for p in plans if p.model == ref.name
                  for n, src in p.sources.items() if p.needs_audio(n)
                  and (only is None or n in only) for t in src.takes]
        done, warns = generate_missing(wanted, cache, ref, gen)
        generated |= done
        shared += warns
    results = []
    for p in plans:
        try:
            results.append(_write(p, ref_of[p.model], cache, frozenset(generated),
                                  tuple(shared), gen, output, want.with_scene(p.arrangement.scene)))
        except OSError as e:
            raise RenderError(f"{p.scene.label}: cannot write outputs: {e}") from None
    return results


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


def _write(p: _Plan, ref: ModelRef, cache: TakeCache, generated: frozenset[str],
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
            for folder in (p.directory, p.directory / "stems"):
                remove_stale_temps(folder)
            p = _plan(p.scene, ref, p.model, output, directory=p.directory)
            if not p.redo_mix and p.previous is not None:
                same = RenderResult(p.previous, p.directory, p.directory / "manifest.json", True)
                return _export(p, same, cache, want) if want else same
            wanted = [t.request for n, src in p.sources.items() if p.needs_audio(n)
                      and (output.only is None or n in output.only) for t in src.takes]
            done, warns = generate_missing(wanted, cache, ref, gen)
            if gen.progress is not None:  # servers report it, and may stop the job here
                gen.progress(f"mix {p.scene.label}", 0, 1)
            mixed = _mix(p, cache, generated | done, shared + tuple(warns), output)
            if gen.progress is not None:
                gen.progress(f"mix {p.scene.label}", 1, 1)
            return _export(p, mixed, cache, want)
    except BaseException:
        # Every writer of this process has closed by now: a temporary file of ours or of a dead
        # worker that is still here was caught between its creation and its cleanup (an
        # interrupt lands anywhere), so it goes too.
        for folder in (p.directory, p.directory / "stems"):
            remove_stale_temps(folder)
        if created:  # leave no empty folder behind a failed first render
            with contextlib.suppress(OSError):
                p.directory.rmdir()
        raise
