"""Scene stage: the engine families, and each element's settings against its engine.

Input: a model string (short name, hub id or local folder) and a validated ``Scene``. Output: the
``EngineSpec`` of the engine family that runs a model (AudioGen, Stable Audio Open 1.0, Stable
Audio Open Small: rate, channels, longest take, own settings and their defaults, licence, hub
repository), and problems as text, one per setting that belongs to another engine or take longer
than the engine makes (``load.py`` prefixes them with ``file:line``). The catalogue lives in the
scene stage because it is part of the format (which setting belongs to which engine); the
generate stage re-exports it beside the engines. No torch here.

An engine is told apart from the files a folder holds, in each family's published layout:
diffusers' ``model_index.json`` (Open 1.0), stable-audio-tools' ``model_config.json`` +
``model.ckpt`` (Open Small), audiocraft's ``state_dict.bin`` + ``compression_state_dict.bin``
(AudioGen).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

AUDIOGEN = "audiogen"
SAO_1 = "stable-audio-open-1.0"
SAO_SMALL = "stable-audio-open-small"

if TYPE_CHECKING:
    from .models import Scene

Setting = float | int | str | None


@dataclass(frozen=True)
class Licence:
    """The licence of an engine's weights, as the manifest and the doctor show it."""

    name: str
    url: str
    commercial: bool  # whether outputs may be sold (within the licence's own terms)
    terms: str  # one line a user can act on
    notice: str | None = None  # text the licence asks to be shown beside the outputs


CC_BY_NC = Licence(
    "CC-BY-NC-4.0", "https://creativecommons.org/licenses/by-nc/4.0/", False,
    "non-commercial use only: takes made with these weights may not be sold or used in a "
    "commercial product")
STABILITY_COMMUNITY = Licence(
    "Stability AI Community License", "https://stability.ai/community-license-agreement", True,
    "commercial use allowed for individuals and organisations under US$1M annual revenue "
    "(register with Stability AI); you own the outputs; show the notice 'Powered by "
    "Stability AI'",
    notice="Powered by Stability AI")


@dataclass(frozen=True)
class EngineSpec:
    """One engine family."""

    name: str  # the engine's name in take keys, errors and the manifest
    title: str
    repo: str  # the published hub repository
    short_names: tuple[str, ...]
    sample_rate: int
    channels: int
    max_take_s: float  # longest take one generation makes (AudioGen extends past it)
    settings: dict[str, Setting]  # the engine's own settings and their defaults
    licence: Licence
    gated: bool  # the hub repository asks users to accept its licence before downloading
    marker_files: tuple[str, ...]  # a local folder in the published layout holds these
    extends: bool = False  # longer takes are made by extending (AudioGen's continuation)
    hub_files: tuple[str, ...] = field(default=())  # what a first render downloads


AUDIOGEN_SPEC = EngineSpec(
    AUDIOGEN, "AudioGen", "facebook/audiogen-medium", ("audiogen-medium", "audiogen"), 16000, 1,
    10.0, {"temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0,
           "extend_stride": 5.0},
    CC_BY_NC, False, ("state_dict.bin", "compression_state_dict.bin"), extends=True,
    hub_files=("state_dict.bin", "compression_state_dict.bin"))
SAO_1_SPEC = EngineSpec(
    SAO_1, "Stable Audio Open 1.0", "stabilityai/stable-audio-open-1.0",
    ("stable-audio-open-1.0", "stable-audio-open", "sao-1.0"), 44100, 2, 47.0,
    {"steps": 100, "cfg_coef": 7.0, "negative_prompt": None, "sampler": "dpmpp-2m-sde"},
    STABILITY_COMMUNITY, True, ("model_index.json",))
SAO_SMALL_SPEC = EngineSpec(
    SAO_SMALL, "Stable Audio Open Small", "stabilityai/stable-audio-open-small",
    ("stable-audio-open-small", "sao-small"), 44100, 2, 11.0,
    {"steps": 8, "cfg_coef": 1.0, "negative_prompt": None},
    STABILITY_COMMUNITY, True, ("model_config.json", "model.ckpt"),
    hub_files=("model_config.json", "model.ckpt"))
ENGINES: dict[str, EngineSpec] = {s.name: s for s in (AUDIOGEN_SPEC, SAO_1_SPEC, SAO_SMALL_SPEC)}
# Open 1.0's samplers: diffusers' CosineDPMSolverMultistepScheduler as published (second order,
# "dpmpp-2m-sde") or at first order. diffusers' other DPM-Solvers precondition the noise level
# with a logarithm, which is not what this DiT was trained on, so they are not offered.
SAO_1_SAMPLERS = ("dpmpp-2m-sde", "dpmpp-sde")
ALL_SETTINGS = tuple(dict.fromkeys(k for s in ENGINES.values() for k in s.settings))


def by_short_name(model: str) -> EngineSpec | None:
    """The engine a short name (``stable-audio-open-small``) or a published hub id names."""
    low = model.strip().lower()
    for spec in ENGINES.values():
        if low in spec.short_names or low == spec.repo.lower():
            return spec
    return None


def detect_folder(path: Path) -> EngineSpec | None:
    """The engine whose published layout the folder holds, or None."""
    if (path / "model_index.json").is_file():
        return SAO_1_SPEC
    for spec in (SAO_SMALL_SPEC, AUDIOGEN_SPEC):
        if all((path / f).is_file() for f in spec.marker_files):
            return spec
    return None


def layouts_text() -> str:
    return ("diffusers' model_index.json + vae/ transformer/ ... (Stable Audio Open 1.0), "
            "model_config.json + model.ckpt (Stable Audio Open Small) or state_dict.bin + "
            "compression_state_dict.bin (AudioGen)")


def engine_of_model(model: str, base_dir: Path | None = None) -> EngineSpec:
    """The engine that runs ``model`` as the scene names it, without loading anything: a short
    name or published hub id, a local folder by its files, else AudioGen (any other hub id is
    taken as an AudioGen export, as before Stable Audio existed)."""
    spec = by_short_name(model)
    if spec is not None:
        return spec
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        found = detect_folder(path)
        if found is not None:
            return found
    return AUDIOGEN_SPEC


def settings_for(spec: EngineSpec, given: dict[str, Setting]) -> dict[str, Setting]:
    """The engine's settings: its defaults overridden by ``given`` (keys of other engines are
    ignored here; the scene stage refuses them where they were written)."""
    return {k: given.get(k, v) if given.get(k) is not None else v
            for k, v in spec.settings.items()}


def model_config_sample_rate(path: Path) -> int | None:
    """The rate a stable-audio-tools ``model_config.json`` declares (None if unreadable)."""
    try:
        return int(json.loads((path / "model_config.json").read_text())["sample_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        return None



def takers(setting: str) -> str:
    """The engines that take ``setting``, as words."""
    return " and ".join(s.title for s in ENGINES.values() if setting in s.settings)


def element_engine(scene: Scene, name: str) -> EngineSpec:
    e = scene.elements[name]
    return engine_of_model(e.model if e.model is not None else scene.model, scene.base_dir)


def engine_problems(scene: Scene, name: str, spec: EngineSpec) -> list[str]:
    """What of element ``name`` does not suit ``spec``: its own settings of other engines, a
    sampler the engine lacks, a take longer than one generation (except where the engine
    extends, as AudioGen does)."""
    e = scene.elements[name]
    if e.prompt is None:
        return []
    out = []
    for k in ALL_SETTINGS:
        if k in spec.settings or k == "extend_stride":
            continue
        if getattr(e, k, None) is not None:
            out.append(f"{k}: {spec.title} has no {k} (it is a setting of {takers(k)}); remove "
                       f"it, or give this element a model: that takes it")
    sampler = e.sampler if e.sampler is not None else scene.defaults.sampler
    if "sampler" in spec.settings and sampler is not None and sampler not in SAO_1_SAMPLERS:
        out.append(f"sampler: {sampler!r} is not a sampler of {spec.title}; use one of "
                   f"{', '.join(SAO_1_SAMPLERS)}")
    duration = e.duration if e.duration is not None else scene.defaults.duration
    if not spec.extends and duration > spec.max_take_s + 1e-9:
        out.append(f"duration: a {duration:g} s take is longer than the {spec.max_take_s:g} s "
                   f"{spec.title} makes in one generation; use a shorter take and loop it "
                   f"(loop: true) or scatter it")
    return out


def scene_engine_problems(scene: Scene) -> list[tuple[tuple[str, ...], str]]:
    """``(location, message)`` for every element, against the engine its model names, and for
    defaults no engine of the scene takes."""
    out: list[tuple[tuple[str, ...], str]] = []
    used: set[str] = set()
    for name in scene.elements:
        if scene.elements[name].prompt is None:
            continue
        spec = element_engine(scene, name)
        used.add(spec.name)
        for msg in engine_problems(scene, name, spec):
            out.append((("elements", name, msg.partition(":")[0]), msg))
    d: Any = scene.defaults
    for k in sorted(d.model_fields_set & set(ALL_SETTINGS)):
        if used and not any(k in ENGINES[u].settings for u in used):
            out.append((("defaults", k), f"{k}: no element of this scene uses an engine that "
                        f"takes it ({takers(k)}); remove it"))
    return out
