"""Scene stage: each element's settings against the engine that will generate it.

Input: a validated ``Scene`` (and, from the takes stage, the engine a ``--model`` chose). Output:
problems as text, one per setting that belongs to another engine or take longer than the engine
makes; ``load.py`` prefixes them with ``file:line``. No torch: engines are told apart by name and
by the files of a local folder (``generate.engines``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..generate.engines import ALL_SETTINGS, ENGINES, SAO_1_SAMPLERS, EngineSpec, engine_of_model

if TYPE_CHECKING:
    from .models import Scene


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
