"""Scene stage: YAML file -> validated, immutable ``Scene`` (variants resolved here).

``models`` is the format (pydantic, the JSON Schema's source), ``load`` reads YAML, merges variants
and words the errors, ``units`` parses values written with units, ``yamlsrc`` keeps every value's
line, ``keep`` writes a chosen seed back into a file. Nothing after this stage sees YAML or dicts.
"""

from __future__ import annotations

from .load import format_errors, json_schema, load_all, load_scene, scene_from_dict
from .models import (
    DEFAULT_MODEL,
    NAME_PATTERN,
    Ceiling,
    Decibels,
    Defaults,
    Element,
    Keyframe,
    Loop,
    Loudness,
    Master,
    PositiveDuration,
    Scatter,
    Scene,
    derive_seed,
)

__all__ = [
    "DEFAULT_MODEL", "NAME_PATTERN", "Ceiling", "Decibels", "Defaults", "Element", "Keyframe",
    "Loop", "Loudness", "Master", "PositiveDuration", "Scatter", "Scene", "derive_seed",
    "format_errors", "json_schema", "load_all", "load_scene", "scene_from_dict",
]
