"""Render stage: the only module that knows the stage order; writes outputs and the manifest.

Input: scene files (or ``Scene`` objects) and options. Output: per scene and variant, under
``<out>/<scene>/[<variant>/]``: ``mix.<fmt>``, ``stems/<element>.<fmt>`` and ``manifest.json``.
Order: scene -> take requests -> cache look-up -> generate missing (batched across elements and
variants, stored after every batch) -> conform takes -> arrange -> mix stems -> master -> write.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .arrange import Arrangement, arrange
from .audio_io import FORMATS, AtomicAudioWriter, atomic_write_text, read_audio, resample
from .cache import TakeCache
from .effects import build_board
from .errors import RenderError, SoundscapeError
from .generate import TakeRequest
from .generate.models import ModelRef, resolve
from .master import master
from .mix import decorrelate, widen
from .page import loop_extras, write_page, write_takes_page
from .scene import Element, Scene, load_scene
from .stems import StemJob, choose_workers, render_stems

MEDIUM_CPU_S_PER_AUDIO_S = 70.0  # measured: AudioGen-medium on a 2-core CPU, batch 1
Log = Callable[[str], None]


@dataclass(frozen=True)
class Take:
    """One planned take of one element in one scene."""

    element: str
    index: int
    request: TakeRequest


@dataclass
class RenderResult:
    """What one scene or variant render wrote."""

    scene: str
    variant: str | None
    directory: Path
    mix: Path | None
    stems: dict[str, Path]
    manifest: Path
    generated: int
    cached: int
    elements: list[dict[str, Any]] = field(default_factory=list)
    mix_lufs: float = math.nan
    mix_true_peak_dbtp: float = math.nan
    warnings: list[str] = field(default_factory=list)


def take_count(e: Element) -> int:
    return max(e.variations, 2 if e.stereo == "two_takes" else 1)


def plan_takes(scene: Scene, ref: ModelRef) -> list[Take]:
    """The take requests of every prompt element of ``scene``."""
    d = scene.defaults
    out = []
    identity = ref.identity
    for name, e in scene.elements.items():
        if e.prompt is None:
            continue
        seed = scene.element_seed(name)
        for i in range(take_count(e)):
            out.append(Take(name, i, TakeRequest(
                model=identity, prompt=e.prompt,
                duration_s=e.duration if e.duration is not None else d.duration,
                temperature=e.temperature if e.temperature is not None else d.temperature,
                top_k=e.top_k if e.top_k is not None else d.top_k,
                top_p=e.top_p if e.top_p is not None else d.top_p,
                cfg_coef=e.cfg_coef if e.cfg_coef is not None else d.cfg_coef,
                extend_stride_s=d.extend_stride,
                seed=(seed + i) % 2**63)))
    return out


def cost_line(n: int, seconds: float, device: str, ref: ModelRef) -> str:
    line = f"generating {n} take(s), {seconds:.1f} s of audio, on {device}"
    if device == "cpu" and not ref.is_local:
        est = seconds * MEDIUM_CPU_S_PER_AUDIO_S
        line += (f"; warning: AudioGen-medium on a CPU needs about {MEDIUM_CPU_S_PER_AUDIO_S:.0f} "
                 f"s per second of audio (about {est / 60:.0f} min here); a GPU is ~100x faster")
    return line


def generate_missing(requests: Iterable[TakeRequest], cache: TakeCache, ref: ModelRef,
                     device: str, max_batch: int, log: Log,
                     progress: Callable[[str, int, int], None] | None = None) -> set[str]:
    """Generate the requests whose keys are not cached; returns the keys generated now."""
    seen: dict[str, TakeRequest] = {}
    for r in requests:
        if r.key not in seen and not cache.has(r.key):
            seen[r.key] = r
    for p in cache.problems:
        log(f"warning: {p}")
    cache.problems.clear()
    if not seen:
        return set()
    missing = list(seen.values())
    from .generate.models import locate

    locate(ref)  # fail fast, before the slow import, when the weights cannot be had
    from .generate.audiogen import Generator, pick_device  # the heavy import, only now

    dev = pick_device(device)
    log(cost_line(len(missing), sum(r.duration_s for r in missing), dev, ref))
    gen = Generator(ref, dev, max_batch=max_batch, progress=progress)
    done: set[str] = set()

    def store(reqs: list[TakeRequest], audio: list[np.ndarray], seconds: float) -> None:
        for r, a in zip(reqs, audio, strict=True):
            cache.put(r, a, gen.sample_rate, seconds / len(reqs))
            done.add(r.key)

    gen.generate(missing, on_batch=store)
    for note in gen.notes:
        log(f"warning: {note}")
    return done


def _conform(audio: np.ndarray, sr: int, scene: Scene) -> np.ndarray:
    audio = resample(audio, sr, scene.sample_rate)
    if audio.shape[0] > 2:
        audio = np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)])
    return audio


def element_takes(scene: Scene, name: str, takes: list[Take], cache: TakeCache) \
        -> list[np.ndarray] | None:
    """The element's takes at the scene rate, in its stereo mode; None if a take is missing."""
    e = scene.elements[name]
    if e.file is not None:
        audio, sr = read_audio(e.file)
        audio = _conform(audio, sr, scene)
        if e.stereo == "decorrelate" and audio.shape[0] == 1 and scene.channels == 2:
            audio = decorrelate(audio, scene.element_seed(name), e.width)
        elif audio.shape[0] == 2 and scene.channels == 2 and e.width < 1:
            audio = widen(audio, e.width)
        return [audio]
    mine = sorted((t for t in takes if t.element == name), key=lambda t: t.index)
    out = []
    for t in mine:
        got = cache.get(t.request.key)
        if got is None:
            return None
        out.append(_conform(got[0], got[1], scene))
    if scene.channels == 2 and e.stereo == "two_takes":
        n = min(out[0].shape[1], out[1].shape[1])
        out = [widen(np.concatenate([out[0][:, :n], out[1][:, :n]]), e.width)]
    elif scene.channels == 2 and e.stereo == "decorrelate":
        out = [decorrelate(a, scene.element_seed(name) + i, e.width) for i, a in enumerate(out)]
    return out


def output_dir(out: Path, scene: Scene) -> Path:
    d = out / scene.name
    return d / scene.variant if scene.variant else d


def _versions() -> dict[str, str]:
    v = {"soundscape": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "pedalboard", "pyloudnorm", "soxr", "audiocraft", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            v[pkg] = metadata.version(pkg)
    return v


def _db(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 2)


def mix_scene(scene: Scene, takes: list[Take], cache: TakeCache, out: Path, fmt: str,
              bit_depth: int | None, only: Sequence[str] | None, generated: set[str],
              log: Log, jobs_requested: int | None = None) -> RenderResult:
    """Conform, arrange, mix, master and write one scene (or variant)."""
    sr, ch = scene.sample_rate, scene.channels
    total = int(round(scene.duration * sr))
    directory = output_dir(out, scene)
    audio: dict[str, list[np.ndarray]] = {}
    warnings: list[str] = []
    for name in scene.elements:
        got = element_takes(scene, name, takes, cache)
        if got is None:
            warnings.append(f"{name} has no take yet (not generated: excluded by --only); "
                            f"left out of the mix")
            continue
        audio[name] = got
    lengths = {n: a[0].shape[1] / sr for n, a in audio.items()}
    present = {n: scene.elements[n] for n in audio}
    arr: Arrangement = arrange(scene.model_copy(update={"elements": present}), lengths)
    warnings.extend(arr.warnings)
    stems: dict[str, Path] = {}
    jobs = []
    for plan in arr.elements:
        write = only is None or plan.name in only
        stem_path = directory / "stems" / f"{plan.name}.{fmt}"
        if write:
            stems[plan.name] = stem_path
        jobs.append(StemJob(plan, scene.elements[plan.name], audio[plan.name],
                            stem_path if write else None, sr, scene.duration))
    workers = choose_workers(len(jobs), scene.duration, jobs_requested)
    mix, measures = render_stems(jobs, sr, ch, total, bit_depth, workers)
    elements_report = []
    float_stems = fmt == "wav" and bit_depth == 32
    for plan in arr.elements:
        e = scene.elements[plan.name]
        measure = measures[plan.name]
        if plan.name in stems and measure.sample_peak > 1.0 and not float_stems:
            warnings.append(f"stem {plan.name} peaks at "
                            f"+{20 * math.log10(measure.sample_peak):.1f} dBFS before the master "
                            f"and is clipped in its {fmt} file (the mix is not); lower its "
                            f"volume or write stems as 32-bit float wav (--bit-depth 32)")
        mine = [t for t in takes if t.element == plan.name]
        elements_report.append({
            "element": plan.name,
            "source": "file" if e.file else "prompt",
            "file": e.file,
            "placements": [
                {"type": "loop", "start_s": lp.start_s, "end_s": lp.end_s, "times": lp.times,
                 "crossfade_s": lp.crossfade_s,
                 **loop_extras(audio[plan.name][lp.take], lp, sr, total)} for lp in plan.loops
            ] + [
                {"type": "play", "start_s": round(c.start_s, 6), "length_s": round(c.length_s, 6),
                 "take": c.take, "gain_db": round(c.gain_db, 3), "pan": round(c.pan, 4),
                 "fade_in_s": c.fade_in_s, "fade_out_s": c.fade_out_s}
                for c in plan.clips
            ],
            "volume_db": _db(e.volume),
            "automation": [{"time_s": k.time, "level_db": k.level} for k in e.automation],
            "takes": [{
                "index": t.index, "key": t.request.key, "seed": t.request.seed,
                "prompt": t.request.prompt, "duration_s": t.request.duration_s,
                "settings": t.request.settings, "model": t.request.model,
                "generated": t.request.key in generated,
            } for t in mine],
            "stem": str(stems[plan.name].relative_to(directory)) if plan.name in stems
            else None,
            "loudness_lufs": _db(measure.loudness_lufs),
            "true_peak_dbtp": _db(measure.true_peak_dbtp),
        })
    if scene.master.effects:
        board = build_board(tuple(scene.master.effects))
        mix = np.ascontiguousarray(board(mix, sr), dtype=np.float32)
    mastered, report = master(mix, sr, scene.master.loudness, scene.master.ceiling)
    del mix
    warnings.extend(report.notes)
    mix_path = directory / f"mix.{fmt}"
    with AtomicAudioWriter(mix_path, sr, ch, bit_depth) as w:
        w.write(mastered)
    del mastered
    n_gen = sum(1 for t in takes if t.request.key in generated)
    manifest = {
        "scene": scene.name,
        "variant": scene.variant,
        "scene_file": str(scene.path) if scene.path else None,
        "duration_s": scene.duration,
        "sample_rate": sr,
        "channels": ch,
        "format": fmt,
        "model": scene.model,
        "seed": scene.seed,
        "rendered": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "only": list(only) if only else None,
        "mix": {"file": mix_path.name, "loudness_lufs": _db(report.output_lufs),
                "true_peak_dbtp": _db(report.true_peak_dbtp),
                "pre_master_lufs": _db(report.input_lufs), "gain_db": round(report.gain_db, 3),
                "limiter_reduction_db": round(report.limiter_reduction_db, 3),
                "target_lufs": scene.master.loudness, "ceiling_dbtp": scene.master.ceiling},
        "elements": elements_report,
        "generated": n_gen,
        "cached": len(takes) - n_gen,
        "warnings": warnings,
        "versions": _versions(),
    }
    manifest_path = directory / "manifest.json"
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    write_page(directory)
    return RenderResult(scene.name, scene.variant, directory, mix_path, stems, manifest_path,
                        n_gen, len(takes) - n_gen, elements_report, report.output_lufs,
                        report.true_peak_dbtp, warnings)


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
           progress: Callable[[str, int, int], None] | None = None,
           jobs: int | None = None) -> list[RenderResult]:
    """Render scenes end to end; returns one ``RenderResult`` per scene or variant.

    Takes shared between scenes or variants are generated once; generation runs only for
    takes missing from the cache (and, with ``only``, only for those elements). ``jobs``:
    processes that render stems (None: one per CPU core for long scenes, else one).
    """
    log = log or (lambda s: None)
    if fmt not in FORMATS:
        raise SoundscapeError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if isinstance(sources, str | Path | Scene):
        sources = [sources]
    scenes = [s for src in sources for s in select_scenes(src, variant, all_variants)]
    if only:
        for s in scenes:
            unknown = [o for o in only if o not in s.elements]
            if unknown and len(scenes) == 1:
                raise SoundscapeError(f"--only: {s.label} has no element "
                                      f"{', '.join(map(repr, unknown))}; elements: "
                                      f"{', '.join(s.elements)}")
    cache = TakeCache(cache_dir)
    plans: list[tuple[Scene, list[Take]]] = []
    refs: dict[str, ModelRef] = {}
    for s in scenes:
        name = model or s.model
        if name not in refs:
            refs[name] = resolve(name, s.base_dir)
        plans.append((s, plan_takes(s, refs[name])))
    generated: set[str] = set()
    for name, ref in refs.items():
        wanted = [t.request for s, ts in plans if (model or s.model) == name for t in ts
                  if only is None or t.element in only]
        generated |= generate_missing(wanted, cache, ref, device, max_batch, log, progress)
    results = []
    for s, ts in plans:
        try:
            results.append(mix_scene(s, ts, cache, Path(out), fmt, bit_depth, only, generated,
                                     log, jobs))
        except OSError as e:
            raise RenderError(f"{s.label}: cannot write outputs: {e}") from None
    return results


def audition(scene_path: str | Path, element: str, n: int = 4, *, variant: str | None = None,
             out: str | Path = "renders", model: str | None = None, device: str = "auto",
             cache_dir: str | Path | None = None, max_batch: int = 8, log: Log | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> list[tuple[int, Path]]:
    """Generate ``n`` takes of one element with distinct seeds (one batch) and write each as
    ``<out>/<scene>/takes/<element>/<element>-seed<SEED>.wav``. Returns ``(seed, path)``."""
    log = log or (lambda s: None)
    scene = load_scene(scene_path, variant)
    if element not in scene.elements:
        raise SoundscapeError(f"{scene_path}: no element '{element}'; elements: "
                              f"{', '.join(scene.elements)}")
    e = scene.elements[element]
    if e.prompt is None:
        raise SoundscapeError(f"{element} plays a file, not a prompt; nothing to audition")
    ref = resolve(model or scene.model, scene.base_dir)
    base = plan_takes(scene.model_copy(update={"elements": {element: e.model_copy(
        update={"variations": n, "stereo": "pan"})}}), ref)
    cache = TakeCache(cache_dir)
    generate_missing([t.request for t in base], cache, ref, device, max_batch, log, progress)
    files = []
    for t in base:
        got = cache.get(t.request.key)
        if got is None:
            raise RenderError(f"take seed {t.request.seed} is missing from the cache; run again")
        from .audio_io import write_audio

        path = Path(out) / scene.name / "takes" / element / f"{element}-seed{t.request.seed}.wav"
        write_audio(path, got[0], got[1])
        files.append((t.request.seed, path))
    write_takes_page(files[0][1].parent, scene.label, str(scene_path), element, e.prompt, files)
    return files
