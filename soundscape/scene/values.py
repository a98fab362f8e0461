"""Scene stage, values: the units-aware field types of the format and its ceilings.

Each type parses what YAML gives (a number or a string with a unit: '2.5 s', '-6 dB', '8 kHz')
into a plain number in the unit its name says, with a message that shows how to write it, and
states itself in the JSON Schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainValidator, ValidationInfo, WithJsonSchema

from .. import units
from ..dsp.effects import EffectSpec, effect_json_schema, parse_effect
from ..units import show

DEFAULT_MODEL = "facebook/audiogen-medium"
# Ceilings (stated in the schema): past them a render cannot be what the user meant, or cannot
# fit in memory or on a disk; each gives one clear error instead.
MAX_SCENE_S = 24 * 3600.0
MAX_TAKE_S = 300.0  # AudioGen extends past its 10 s window: 5 min is ~8 min of model time
MAX_ELEMENTS = 256
MAX_PLAYS = 10_000  # at: times, and automation keyframes
MAX_EFFECTS = 32
MAX_LEVEL_DB = 48.0  # element volume and automation levels
RESERVED_VARIANTS = ("stems", "takes", "loops", "pools")  # folders of the base render
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"

_NUM_OR_STR = [{"type": "number"}, {"type": "string"}]


def _schema(description_of_units: str) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": _NUM_OR_STR, "description": description_of_units})


def _nonneg_duration(v: Any) -> float:
    s = units.parse_duration(v)
    if s < 0:
        raise ValueError(f"{show(v)} is negative; durations and times are >= 0")
    return s


def _pos_duration(v: Any) -> float:
    s = units.parse_duration(v)
    if s <= 0:
        raise ValueError(f"{show(v)} must be longer than 0 s")
    return s


def _take_duration(v: Any) -> float:
    s = _pos_duration(v)
    if s > MAX_TAKE_S:
        raise ValueError(f"{show(v)} is longer than the {MAX_TAKE_S / 60:g} min a take may last; "
                         f"use a shorter take and loop it, or several elements")
    return s


def _scene_duration(v: Any) -> float:
    s = _pos_duration(v)
    if s > MAX_SCENE_S:
        raise ValueError(f"{show(v)} is longer than the {MAX_SCENE_S / 3600:g} h a scene may last; "
                         f"render it in parts")
    return s


def _lufs_or_off(v: Any) -> float | None:
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return None
    if v is False:
        return None
    return units.parse_lufs(v)


def _pan(v: Any) -> float:
    if isinstance(v, str):
        named = {"left": -1.0, "l": -1.0, "center": 0.0, "centre": 0.0, "c": 0.0,
                 "right": 1.0, "r": 1.0}
        if v.strip().lower() in named:
            return named[v.strip().lower()]
    try:
        p = units.parse_float(v)
    except ValueError:
        raise ValueError(f"{show(v)} is not a pan position; write a number from -1 (left) "
                         f"to 1 (right), or left/center/right") from None
    if not -1.0 <= p <= 1.0:
        raise ValueError(f"{show(v)} is outside -1..1; -1 is hard left, 1 is hard right")
    return p


Duration = Annotated[float, BeforeValidator(_nonneg_duration),
                     _schema("Seconds: a number or a string with a unit ('2.5 s', '500 ms', "
                             "'2 min', '1:30').")]
PositiveDuration = Annotated[float, BeforeValidator(_pos_duration),
                             _schema("Seconds > 0: a number or '2.5 s', '500 ms', '1:30'.")]
TakeDuration = Annotated[float, BeforeValidator(_take_duration),
                         _schema("Seconds, > 0 and at most 300: a number or '2.5 s', '1:30'.")]
SceneDuration = Annotated[float, BeforeValidator(_scene_duration),
                          _schema("Seconds, > 0 and at most 24 h: a number or '90 s', '2 min', "
                                  "'1:30', '3 h'.")]
def _level(v: Any) -> float:
    db = units.parse_level_db(v)
    if db > MAX_LEVEL_DB:  # past this, gains multiply float32 samples into infinity
        raise ValueError(f"{show(v)} is {db:+.2f} dB, more than the +{MAX_LEVEL_DB:g} dB a level "
                         f"may add; write e.g. '+6 dB' or 2")
    return db


Level = Annotated[float, BeforeValidator(_level),
                  _schema("A level: '-6 dB', or a linear gain such as 0.5 (0 is silence); at "
                          "most +48 dB.")]
Decibels = Annotated[float, BeforeValidator(units.parse_db),
                     _schema("Decibels: -3 or '-3 dB'.")]
Pan = Annotated[float, BeforeValidator(_pan),
                _schema("Pan: -1 (left), 0 (centre), 1 (right), or left/center/right.")]
Loudness = Annotated[float | None, BeforeValidator(_lufs_or_off),
                     _schema("Integrated loudness target per ITU-R BS.1770: '-16 LUFS' or -16; "
                             "'off' skips normalisation.")]
Ceiling = Annotated[float, BeforeValidator(units.parse_dbtp),
                    _schema("True-peak ceiling: '-1 dBTP' or -1.")]


def _effect(v: Any, info: ValidationInfo) -> EffectSpec:
    if isinstance(v, EffectSpec):
        return v
    base = (info.context or {}).get("base_dir")
    return parse_effect(v, Path(base) if base else None)


Effect = Annotated[EffectSpec, PlainValidator(_effect), WithJsonSchema(effect_json_schema())]


