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
import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .arrange import Arrangement, ElementPlan, LoopRun
from .audio_io import atomic_path, atomic_write_text, remove_stale_temps, write_audio
from .cache import TakeCache
from .effects import build_board, chain_tail_s
from .errors import SoundscapeError
from .fades import fade_curves
from .loops import LoopSource
from .scene import Scene
from .takes import Source, element_takes, two_takes
from .warnings import RenderWarning

EXPORTS_VERSION = "1"  # bump when an export's audio changes for the same inputs
EXPORT_KINDS = ("loops", "pools")
LOOPS_DIR, POOLS_DIR, POOLS_JSON = "loops", "pools", "pools/pools.json"
# Effects whose output is not periodic for a periodic input (an LFO, a block-wise pitch
# shifter): a loop file through them would not join at its ends, so it is written dry.
TIME_VARYING = frozenset({"chorus", "phaser", "pitch_shift"})
SOFTWARE = f"soundscape {__version__}"


# ---------------------------------------------------------------------------------------------
# Metadata


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


def element_tags(scene: Scene, name: str, source: Source, title: str, key: str = "",
                 created: str = "", loudness_lufs: float | None = None,
                 true_peak_dbtp: float | None = None) -> Tags:
    """The tags of a file made from one element of ``scene``."""
    e = scene.elements[name]
    what = e.prompt if e.prompt is not None else f"recording {Path(e.file or '').name}"
    seed = source.takes[0].request.seed if source.takes else None
    return Tags(title, f"{scene.label} {name}: {what}", scene.name, scene.variant, name,
                e.prompt, seed, source.takes[0].request.model if source.takes else None, key,
                created or now_iso(), loudness_lufs, true_peak_dbtp)


def mix_tags(scene: Scene, model: str, key: str, loudness_lufs: float | None,
             true_peak_dbtp: float | None) -> Tags:
    """The tags of a scene's mastered mix: its description (or its elements), its measured
    loudness and true peak."""
    what = scene.description or ", ".join(scene.elements)
    return Tags(f"{scene.label} mix", f"{scene.label} mix: {what}", scene.name, scene.variant,
                None, None, scene.seed, model, key, now_iso(), loudness_lufs, true_peak_dbtp)


def tag_file(path: str | Path, tags: Tags, loop_frames: int | None = None) -> bool:
    """Write ``tags`` into the finished audio file at ``path`` (replacing earlier tags), and for
    a WAV file with ``loop_frames`` a ``smpl`` loop over the whole file. The file is rewritten
    through a temporary file and renamed. Returns False when the format carries no tags here
    (a WAV file past 4 GiB, RF64).

    WAV: ``bext`` (description, originator ``soundscape <version>``, originator reference = the
    key, date and time, time reference 0, loudness and true peak when measured) and ``LIST/INFO``
    (``INAM`` title, ``IPRD`` scene, ``ICMT`` the identity, ``ISFT`` software, ``ICRD`` date).
    FLAC and Ogg: Vorbis comments (TITLE, ALBUM, DESCRIPTION, COMMENT the identity, DATE,
    ENCODER, and SOUNDSCAPE_* one field per part of the identity). MP3: ID3 (TIT2, TALB,
    COMM, TDRC, TSSE, TXXX:SOUNDSCAPE_*).
    """
    from . import riff

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    date, _, clock = (tags.created or now_iso()).partition("T")
    ident = tags.identity()
    comment = "; ".join(f"{k}={v}" for k, v in ident.items())
    if fmt == "wav":
        fmt_info = _wav_format(path)
        history = ""
        if fmt_info is not None:
            rate, channels, bits, _ = fmt_info
            mode = {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")
            history = f"A=PCM,F={rate},W={bits},M={mode},T={SOFTWARE}\r\n"
        before = {b"bext": riff.bext(tags.description, SOFTWARE, tags.key[:32], date,
                                     clock[:8], 0, tags.loudness_lufs, tags.true_peak_dbtp,
                                     history)}
        after = {b"LIST": riff.info_list({"INAM": tags.title, "IPRD": tags.scene,
                                          "ICMT": comment, "ISFT": SOFTWARE, "ICRD": date})}
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


def _wav_format(path: Path) -> tuple[int, int, int, int] | None:
    """``(sample_rate, channels, bits, block_align)`` from a WAV file's ``fmt `` chunk."""
    import struct

    from .riff import wav_chunks

    chunks = wav_chunks(path)
    fmt = next((c for c in chunks or () if c.id == b"fmt "), None)
    if fmt is None:
        return None
    with path.open("rb") as f:
        f.seek(fmt.offset)
        _, channels, rate, _, align, bits = struct.unpack("<HHIIHH", f.read(16))
    return rate, channels, bits, align


# ---------------------------------------------------------------------------------------------
# Loop files


def levels(audio: np.ndarray, sample_rate: int, looped: bool) -> tuple[float | None,
                                                                       float | None]:
    """Integrated loudness (LUFS) and true peak (dBTP) of a file, None where silent. A loop
    file is measured as it plays, repeated (at least 3 s, so the wrap and the gating blocks
    count); a one-shot as it is."""
    from .meter import measure

    n = audio.shape[1]
    if n == 0:
        return None, None
    if looped:
        audio = np.tile(audio, (1, max(2, math.ceil(3 * sample_rate / n))))
    m = measure(audio, sample_rate)
    lufs, peak = m.integrated_loudness(), m.true_peak_db
    return (round(lufs, 2) if math.isfinite(lufs) else None,
            round(peak, 2) if math.isfinite(peak) else None)


def loop_period(take: np.ndarray, run: LoopRun, sample_rate: int) -> np.ndarray:
    """One period of a loop run: the take from its loop start, the crossfade folded in at the
    end, so the last frames blend into the first exactly as every seam of the run does.

    Copy k of a run plays ``take[start:end]`` at run frame ``k * period``; from the second copy
    on, the run repeats with ``period = end - start - crossfade`` frames. The file is run frames
    ``[period + start + xf, 2 * period + start + xf)``: it opens on the take's body just after a
    crossfade and closes with the next crossfade, so the file repeated is the run itself.
    Returns float32 ``(channels, period)``.
    """
    steady = replace(run, start_s=0.0, end_s=None, times=4, fade_in_s=0.0, fade_out_s=0.0)
    src = LoopSource(take, steady, sample_rate, 0)
    a = src.period + src.loop_start + src.xf
    return src.read(a, a + src.period)


def periodic_effects(period: np.ndarray, plan: ElementPlan, sample_rate: int) -> np.ndarray:
    """``period`` through the element's effects in their steady state: the chain hears the
    period repeated until its tails (reverb, delay, compressor release) have wrapped around, and
    the last period is kept, so the effects' tails fold into the file's start as they would in
    an endless loop. Time-varying effects are left out by the caller (``TIME_VARYING``)."""
    n = period.shape[1]
    if not plan.effects or n == 0:
        return period
    warm = int(math.ceil((chain_tail_s(plan.effects) * sample_rate + sample_rate) / n)) + 1
    wet = build_board(plan.effects)(np.tile(period, (1, warm + 1)), sample_rate)
    return np.ascontiguousarray(wet[:, -n:], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Pools


@dataclass(frozen=True)
class Pool:
    """One scattered element for an engine's random container: its one-shot files and how the
    scene scatters them. Times in seconds, levels in dB; ``files`` relative to ``pools.json``.

    Each play picks one file at random, plays it at ``volume_db`` plus a uniform draw in
    ``[-level_jitter_db, +level_jitter_db]`` and at ``pan`` plus one in ``[-pan_jitter,
    +pan_jitter]`` (clamped to [-1, 1]). The next play starts a uniform draw in ``interval_s``
    later, or with ``density_per_min`` an exponential draw of mean ``60 / density_per_min``;
    without ``overlap`` never before the previous play ends. Plays begin after ``start_s``, end
    by ``end_s`` (null: the scene's end) and stop after ``count`` (null: no limit).
    """

    element: str
    files: tuple[str, ...]
    lengths_s: tuple[float, ...]
    channels: int
    volume_db: float | None  # None: silent
    pan: float
    level_jitter_db: float
    pan_jitter: float
    interval_s: tuple[float, float] | None
    density_per_min: float | None
    count: int | None
    start_s: float
    end_s: float | None
    overlap: bool
    prompt: str | None = None
    seeds: tuple[int, ...] = ()
    baked: tuple[str, ...] = ("fades", "effects")  # what the files already carry

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pool:
        return cls(**{**d, "files": tuple(d["files"]), "lengths_s": tuple(d["lengths_s"]),
                      "interval_s": tuple(d["interval_s"]) if d["interval_s"] else None,
                      "seeds": tuple(d.get("seeds", ())), "baked": tuple(d.get("baked", ()))})


@dataclass(frozen=True)
class PoolExport:
    """``pools/pools.json``: every scattered element of one render."""

    scene: str
    variant: str | None
    sample_rate: int
    duration_s: float
    pools: tuple[Pool, ...]
    software: str = SOFTWARE

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))  # tuples as JSON lists
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PoolExport:
        return cls(**{**d, "pools": tuple(Pool.from_json(p) for p in d["pools"])})


def read_pools(path: str | Path) -> PoolExport:
    """Read ``pools/pools.json`` back into typed values."""
    return PoolExport.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def one_shot(take: np.ndarray, plan: ElementPlan, fade_in_s: float, fade_out_s: float,
             sample_rate: int) -> np.ndarray:
    """One take as the mix plays it, before volume, jitter and pan: the element's fades, then
    its effects with their whole tail (the file is as long as the take plus the chain's tail)."""
    out = take.astype(np.float32, copy=True)
    n = out.shape[1]
    fin, fout = fade_curves(min(int(fade_in_s * sample_rate), n),
                            min(int(fade_out_s * sample_rate), n))
    if fin.size:
        out[:, :fin.size] *= fin
    if fout.size:
        out[:, n - fout.size:] *= fout
    if plan.effects:
        tail = int(round(chain_tail_s(plan.effects) * sample_rate))
        padded = np.concatenate([out, np.zeros((out.shape[0], tail), np.float32)], axis=1)
        out = np.ascontiguousarray(build_board(plan.effects)(padded, sample_rate),
                                   dtype=np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Orchestration


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


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([EXPORTS_VERSION, *parts], sort_keys=True,
                                     default=repr).encode()).hexdigest()


def loop_key(plan: ElementPlan, source: Source, scene: Scene, bit_depth: int | None) -> str:
    return _key("loop", source.identity, plan.loops[0].crossfade_s,
                [repr(fx) for fx in plan.effects], scene.sample_rate, bit_depth)


def pool_key(plan: ElementPlan, source: Source, scene: Scene, bit_depth: int | None) -> str:
    e = scene.elements[plan.name]
    return _key("pool", source.identity, e.fade_in, e.fade_out,
                [repr(fx) for fx in plan.effects], scene.sample_rate, bit_depth)


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
                shot = one_shot(take, plan, e.fade_in, e.fade_out, scene.sample_rate)
                path = directory / POOLS_DIR / name / f"{name}-{i + 1}.wav"
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


def _pool(scene: Scene, plan: ElementPlan, source: Source, rec: Any, directory: Path) -> Pool:
    e = scene.elements[plan.name]
    sc = e.scatter
    assert sc is not None
    from .takes import audio_header

    lengths, channels = [], 1
    for f in rec.files:
        frames, sr, channels = audio_header(directory / f)
        lengths.append(round(frames / sr, 6))
    rel = tuple(str(Path(f).relative_to(POOLS_DIR)) for f in rec.files)
    return Pool(plan.name, rel, tuple(lengths), channels,
                None if plan.volume_db == -math.inf else plan.volume_db, e.pan,
                sc.level_jitter, sc.pan_jitter,
                (sc.interval[0], sc.interval[1]) if sc.interval is not None else None,
                sc.density, sc.count, sc.start, sc.end, sc.overlap, e.prompt,
                variation_seeds(scene, source))


def variation_seeds(scene: Scene, source: Source) -> tuple[int, ...]:
    """The seed of each variation (with ``two_takes``, its left take's); empty for a file."""
    e = scene.elements[source.element]
    paired = len(source.takes) == 2 * e.variations and two_takes(e, scene)
    takes = source.takes[::2] if paired else source.takes
    return tuple(t.request.seed for t in takes)
