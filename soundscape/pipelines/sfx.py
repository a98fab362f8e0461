"""SFX stage: a game's list of one-shots -> N trimmed, loudness-normalised variations each.

Input: a YAML or JSON list (``name``, ``defaults``, ``ucs``, ``sounds: [{name, prompt, duration,
variations, seed, ucs}]``). Output: ``<out>/<list>/<sound>/<sound>-seed<seed>.<fmt>`` (with
``ucs``: ``<sound>/<CatID>_<FXName>_<CreatorID>_<SourceID>-seed<seed>.<fmt>``), each tagged with
its prompt and identity, a manifest and ``catalog.csv`` (one row per file) for library tools.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio_io import atomic_write_text, write_audio
from ..dsp.fades import trim_silence
from ..dsp.meter import sound_levels
from ..errors import SceneError
from ..generate import TakeRequest
from ..generate.models import resolve
from ..master import limit
from ..notices import RenderWarning
from ..options import ClusterSpec, GenerationOptions, Log, quiet
from ..outputs.catalog import SfxVariation, catalog_csv
from ..outputs.manifest import db
from ..outputs.tags import Tags, now_iso, tag_file
from ..scene import (
    Defaults,
    derive_seed,
)
from ..scene.sfxlist import SfxList, Sound, load_sfx_list, sound_ucs, variation_file
from ..takes.run import generate_missing
from ..takes.store import TakeCache


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


def sfx_requests(lst: SfxList, identity: str) -> list[tuple[Sound, TakeRequest]]:
    """Every variation's take request (seeds seed, seed+1, ... per sound)."""
    d = lst.defaults
    stride = Defaults().extend_stride  # one-shots are short; the scene default applies
    plan = []
    for s in lst.sounds:
        base = s.seed if s.seed is not None else derive_seed(lst.seed, s.name)
        for i in range(s.variations or d.variations):
            plan.append((s, TakeRequest(identity, s.prompt, s.duration or d.duration,
                                        d.temperature, d.top_k, d.top_p, d.cfg_coef, stride,
                                        base + i)))
    return plan


def render_sfx(path: str | Path, out: str | Path = "renders", *, model: str | None = None,
               device: str = "auto", cache_dir: str | Path | None = None, fmt: str = "wav",
               max_batch: int = 8, log: Log | None = None, progress: Any = None,
               precision: str = "auto", cluster: ClusterSpec | None = None) -> SfxResult:
    """Generate, trim, normalise and write every variation of an SFX list. ``precision``:
    auto, fp32, bf16 or fp16 for the language model. The keywords are ``GenerationOptions``
    spelled out; ``render_sfx_list`` takes that value."""
    gen = GenerationOptions(model, device, Path(cache_dir) if cache_dir else None, max_batch,
                            precision, log or quiet, progress, cluster)
    return render_sfx_list(path, gen, Path(out), fmt)


def render_sfx_list(path: str | Path, gen: GenerationOptions, out: Path,
                    fmt: str = "wav") -> SfxResult:
    """The SFX pipeline: load the list, generate what is missing, then trim, normalise, tag and
    write each variation, the catalog and the manifest."""
    lst = load_sfx_list(path)
    d = lst.defaults
    ref = resolve(gen.model or lst.model, Path(path).parent)
    plan = sfx_requests(lst, ref.identity)
    cache = TakeCache(gen.cache_dir)
    generated, warnings = generate_missing([r for _, r in plan], cache, ref, gen)
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
        audio, sr = got
        audio = trim_silence(audio, sr, d.trim_threshold)
        target = s.loudness if s.loudness is not None else d.loudness
        measured = sound_levels(audio, sr)[0]
        gain = 0.0 if target is None or math.isinf(measured) else target - measured
        audio, _ = limit(audio * np.float32(10 ** (gain / 20)), sr, d.ceiling)
        file = root / rel
        write_audio(file, audio, sr)
        lufs, peak = map(db, sound_levels(audio, sr))
        u = sound_ucs(lst, s)
        tag_file(file, Tags(u.fxname if u else s.name, f"{lst.name} {s.name}: {s.prompt}",
                            lst.name, None, s.name, s.prompt, r.seed, ref.name, r.key, created,
                            lufs, peak))
        entries.append(SfxVariation(s.name, s.prompt, r.seed, r.key, rel,
                                    audio.shape[1] / sr, lufs, peak, r.key in generated,
                                    cache.generated_with(r.key),
                                    None if u is None else {
                                        "CatID": u.category, "FXName": u.fxname,
                                        "CreatorID": u.creator, "SourceID": u.source}))
    atomic_write_text(root / "catalog.csv", catalog_csv(entries))
    manifest = root / "manifest.json"
    atomic_write_text(manifest, json.dumps({
        "list": lst.name, "source": str(path), "model": ref.name,
        "variations": [asdict(v) for v in entries],
        "warnings": [w.to_json() for w in warnings]}, indent=2))
    return SfxResult(lst.name, root, manifest, ref.name, tuple(entries), tuple(warnings))
