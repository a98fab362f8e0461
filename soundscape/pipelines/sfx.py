"""SFX stage: a game's list of one-shots -> N trimmed, loudness-normalised variations each.

Input: a YAML or JSON list (``name``, ``defaults``, ``ucs``, ``sounds: [{name, prompt, duration,
variations, seed, ucs}]``). Output: ``<out>/<list>/<sound>/<sound>-seed<seed>.<fmt>`` (with
``ucs``: ``<sound>/<CatID>_<FXName>_<CreatorID>_<SourceID>_seed<seed>.<fmt>``), each tagged with
its prompt and identity, a manifest and ``catalog.csv`` (one row per file) for library tools.

A file reaches its loudness target as the master reaches its own: linear make-up, the limiter
only catching peaks, at most ``max_limiting`` dB of it (the list's default, as the master's), its
loss made up in up to three more passes; or it is warned about with the figure it reached and its
peak-to-loudness ratio, and the catalog records what it reached and how much it was limited.
A render of an edited list removes the files an earlier render of it wrote (those its manifest
lists) that the list no longer names.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..audio_io import atomic_write_text, resample, write_audio
from ..dsp.fades import trim_silence
from ..dsp.meter import sound_levels
from ..dsp.stereo import downmix
from ..errors import SceneError, SoundscapeError
from ..generate import Setting, TakeRequest
from ..generate.engines import settings_for
from ..master import MAX_LIMITING_DB, MIN_MAKEUP_YIELD, limit
from ..notices import RenderWarning
from ..options import ClusterSpec, GenerationOptions, Log, quiet
from ..outputs.catalog import SfxVariation, catalog_csv
from ..outputs.manifest import NOTICE_FILE, db
from ..outputs.tags import Tags, now_iso, tag_file
from ..scene import (
    Defaults,
    derive_seed,
)
from ..scene.sfxlist import SfxList, Sound, load_sfx_list, sound_ucs, variation_file
from ..takes.plan import Models, PinnedModel
from ..takes.run import generate_missing
from ..takes.store import TakeCache

REACH_LU = 0.5  # a file further than this from its target is warned about, as a master is


class Normalised(NamedTuple):
    """A short sound brought to its loudness: the audio and what it reached."""

    audio: np.ndarray
    loudness_lufs: float  # reached
    limiting_db: float  # the limiter's deepest gain reduction
    plr_db: float  # the sound's peak-to-loudness ratio before any gain (dB)


def normalise_short(audio: np.ndarray, sample_rate: int, target_lufs: float | None,
                    ceiling_db: float, max_limiting_db: float = MAX_LIMITING_DB) -> Normalised:
    """A short sound at ``target_lufs`` (None: its own level) under a true-peak ceiling of
    ``ceiling_db``, with what it reached.

    The master's rule: the gain is linear make-up and the limiter only catches peaks. The
    make-up stops where the limiter would reduce the peaks by more than ``max_limiting_db``
    (a peaky hit driven to -8 LUFS took 20 dB of it, the limiter as the loudness tool) and
    where more gain no longer raises the loudness; limiting lowers loudness a little, so the
    gain is corrected and the sound limited again, until within 0.1 LU of the target (at
    most three more passes).
    """
    measured, peak = sound_levels(audio, sample_rate)
    plr = peak - measured
    normalise = target_lufs is not None and math.isfinite(measured)
    gain = 0.0
    if normalise:
        assert target_lufs is not None
        gain = min(target_lufs - measured, ceiling_db + max_limiting_db - peak)
    out, reduction = limit(audio * np.float32(10 ** (gain / 20)), sample_rate, ceiling_db)
    reached = sound_levels(out, sample_rate)[0]
    best = Normalised(out, reached, reduction, plr)
    if normalise:
        assert target_lufs is not None
        for _ in range(3):
            over = reduction - max_limiting_db
            if over > 0.05:
                step = -over
            else:
                if abs(reached - target_lufs) <= 0.1 or reduction == 0.0:
                    break
                step = target_lufs - reached
                if step > 0:
                    step = min(step, max_limiting_db - reduction)
                if abs(step) <= 0.05:
                    break
            before = reached
            gain += step
            out, reduction = limit(audio * np.float32(10 ** (gain / 20)), sample_rate,
                                   ceiling_db)
            reached = sound_levels(out, sample_rate)[0]
            if reduction <= max_limiting_db + 0.05 and \
                    abs(reached - target_lufs) < abs(best.loudness_lufs - target_lufs):
                best = Normalised(out, reached, reduction, plr)  # limiting can also lose loudness
            if step > 0 and over <= 0.05 and reached - before < MIN_MAKEUP_YIELD * step:
                break  # more gain makes the sound flatter, hardly louder: stop raising it
    return best


def _why_short(lufs: float, target: float, ceiling_db: float, max_limiting_db: float,
               level: Normalised) -> str:
    """Why a file missed its target, with its peak-to-loudness ratio, and what would reach it."""
    if lufs > target:
        return (f"it is louder than that at its own level ({level.plr_db:.1f} dB peak to "
                f"loudness); raise loudness")
    return (f"its peaks stand {level.plr_db:.1f} dB above its loudness, and {target:.1f} LUFS "
            f"under a {ceiling_db:.1f} dBTP ceiling allows at most "
            f"{ceiling_db + max_limiting_db - target:.1f} dB with the limiting allowed (limited "
            f"{level.limiting_db:.1f} dB, max_limiting {max_limiting_db:g} dB); lower loudness, "
            f"raise ceiling or max_limiting")


def _layout(audio: np.ndarray, sr: int, sample_rate: int | None,
            channels: int | None) -> tuple[np.ndarray, int]:
    """``audio`` at ``sample_rate`` with ``channels`` (None: as generated)."""
    if sample_rate is not None and sample_rate != sr:
        audio, sr = resample(audio, sr, sample_rate), sample_rate
    if channels is not None and channels != audio.shape[0]:
        audio = (np.repeat(audio, channels, axis=0) if audio.shape[0] == 1
                 else downmix(audio, channels))
    return np.ascontiguousarray(audio, dtype=np.float32), sr


def _remove_unlisted(root: Path, keep: set[str]) -> None:
    """Delete what an earlier render of this list wrote (its manifest's files) that the list no
    longer names; nothing else in the folder is touched."""
    try:
        old = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        files = [str(v["file"]) for v in old.get("variations", [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return
    base = root.resolve()
    for rel in files:
        p = (root / rel).resolve()
        if rel in keep or base not in p.parents:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
        with contextlib.suppress(OSError):
            p.parent.rmdir()  # the sound's folder, when it is empty now


@dataclass(frozen=True)
class SfxResult:
    """What ``render_sfx`` wrote: the variations and the manifest beside them."""

    name: str
    directory: Path
    manifest: Path
    model: str
    variations: tuple[SfxVariation, ...]
    warnings: tuple[RenderWarning, ...] = ()

    @property
    def generated(self) -> int:
        return sum(v.generated for v in self.variations)


def sfx_requests(lst: SfxList, model: PinnedModel) -> list[tuple[Sound, TakeRequest]]:
    """Every variation's take request (seeds seed, seed+1, ... per sound)."""
    d = lst.defaults
    stride = Defaults().extend_stride  # one-shots are short; the scene default applies
    spec = model.ref.spec
    given: dict[str, Setting] = {"temperature": d.temperature, "top_k": d.top_k,
                                 "top_p": d.top_p, "cfg_coef": d.cfg_coef,
                                 "extend_stride": stride}
    # the list's sampling defaults are AudioGen's; another engine runs at its own defaults
    settings = settings_for(spec, given if spec.name == "audiogen" else {})
    plan = []
    for s in lst.sounds:
        base = s.seed if s.seed is not None else derive_seed(lst.seed, s.name)
        duration = s.duration or d.duration
        if not spec.extends and duration > spec.max_take_s:
            raise SceneError(f"{lst.name}: sound {s.name}: a {duration:g} s take is longer "
                             f"than the {spec.max_take_s:g} s {spec.title} makes; shorten it")
        for i in range(s.variations or d.variations):
            plan.append((s, TakeRequest.of(spec.name, model.ref.identity, model.revision,
                                           s.prompt, duration, base + i, settings)))
    return plan


def render_sfx(path: str | Path, out: str | Path = "renders", *, model: str | None = None,
               device: str = "auto", cache_dir: str | Path | None = None, fmt: str = "wav",
               max_batch: int = 8, log: Log | None = None, progress: Any = None,
               precision: str = "auto", cluster: ClusterSpec | None = None,
               sample_rate: int | None = None, channels: int | None = None,
               bit_depth: int | None = None, commercial: bool = False) -> SfxResult:
    """Generate, trim, normalise and write every variation of an SFX list. ``precision``:
    auto, fp32, bf16 or fp16 for the language model; ``sample_rate``, ``channels`` (1 or 2)
    and ``bit_depth`` (16, 24 or 32 for WAV): the files' format (None: the model's rate and
    channels, the writer's default depth). The generation keywords are ``GenerationOptions``
    spelled out; ``render_sfx_list`` takes that value."""
    gen = GenerationOptions(model, device, Path(cache_dir) if cache_dir else None, max_batch,
                            precision, log or quiet, progress, cluster, commercial)
    return render_sfx_list(path, gen, Path(out), fmt, sample_rate, channels, bit_depth)


def render_sfx_list(path: str | Path, gen: GenerationOptions, out: Path,
                    fmt: str = "wav", sample_rate: int | None = None,
                    channels: int | None = None, bit_depth: int | None = None) -> SfxResult:
    """The SFX pipeline: load the list, generate what is missing, then trim, normalise, tag and
    write each variation, the catalog and the manifest."""
    if channels is not None and channels not in (1, 2):
        raise SoundscapeError(f"--channels {channels}: use 1 or 2")
    if sample_rate is not None and not 8000 <= sample_rate <= 192000:
        raise SoundscapeError(f"--sample-rate {sample_rate}: use a rate from 8000 to 192000 Hz")
    lst = load_sfx_list(path)
    d = lst.defaults
    models = Models(None, gen.log)
    pinned = models.pin(gen.model or lst.model, Path(path).parent)
    ref = pinned.ref
    lic = ref.spec.licence
    if (gen.commercial or lst.commercial) and not lic.commercial:
        raise SceneError(f"{path}: commercial use was asked for (--commercial or commercial: "
                         f"true) but {ref.spec.title}'s weights are {lic.name}, non-commercial "
                         f"use only; use a model whose licence allows it, e.g. --model "
                         f"stable-audio-open-small, or drop --commercial")
    plan = sfx_requests(lst, pinned)
    model_name = ref.public_name  # a local folder's path stays out of files and the manifest
    cache = TakeCache(gen.cache_dir)
    generated, warnings = generate_missing([r for _, r in plan], cache, models, gen)
    root = out / lst.name
    entries = []
    created = now_iso()
    files = [variation_file(lst, s, r.seed, fmt) for s, r in plan]
    dupes = sorted({f for f in files if files.count(f) > 1})
    if dupes:
        raise SceneError(f"{path}: two variations would both be written as {dupes[0]}; give "
                         f"the sounds different seeds or UCS names")
    for (s, r), rel in zip(plan, files, strict=True):
        got = cache.get(r.key)
        if got is None:
            raise SceneError(f"take {r.key[:12]} of {s.name} vanished from the cache; run again")
        audio, sr = _layout(*got, sample_rate, channels)
        audio = trim_silence(audio, sr, d.trim_threshold)
        target = s.loudness if s.loudness is not None else d.loudness
        level = normalise_short(audio, sr, target, d.ceiling, d.max_limiting)
        audio = level.audio
        file = root / rel
        write_audio(file, audio, sr, bit_depth)
        lufs, peak = map(db, sound_levels(audio, sr))
        if target is not None and lufs is not None and abs(lufs - target) > REACH_LU:
            warnings.append(RenderWarning(
                "master", f"{rel}: reached {lufs:.1f} LUFS, not {target:.1f}: "
                + _why_short(lufs, target, d.ceiling, d.max_limiting, level), s.name, target,
                None, lufs))
        u = sound_ucs(lst, s)
        tag_file(file, Tags(u.fxname if u else s.name, f"{lst.name} {s.name}: {s.prompt}",
                            lst.name, None, s.name, s.prompt, r.seed, model_name, r.key, created,
                            lufs, peak))
        entries.append(SfxVariation(s.name, s.prompt, r.seed, r.key, rel,
                                    audio.shape[1] / sr, lufs, peak, r.key in generated,
                                    cache.generated_with(r.key),
                                    None if u is None else {
                                        "CatID": u.category, "FXName": u.fxname,
                                        "CreatorID": u.creator, "SourceID": u.source,
                                        "UserData": f"seed{r.seed}"},
                                    sr, audio.shape[0], target, lic.name, lic.commercial,
                                    round(level.limiting_db, 2)))
    _remove_unlisted(root, set(files))
    atomic_write_text(root / "catalog.csv", catalog_csv(entries))
    manifest = root / "manifest.json"
    atomic_write_text(manifest, json.dumps({
        "list": lst.name, "source": str(path), "model": model_name, "engine": ref.engine,
        "revision": pinned.revision,
        "licences": [{"licence": lic.name, "commercial": lic.commercial, "terms": lic.terms,
                      "notice": lic.notice,
                      "non_commercial": [] if lic.commercial else [s.name for s in lst.sounds]}],
        "variations": [asdict(v) for v in entries],
        "warnings": [w.to_json() for w in warnings]}, indent=2))
    if lic.notice:
        atomic_write_text(root / NOTICE_FILE, f"{lic.notice}.\nThese sounds were made with "
                          f"{ref.spec.title}, licensed under the {lic.name} ({lic.url}).\n")
    return SfxResult(lst.name, root, manifest, model_name, tuple(entries), tuple(warnings))
