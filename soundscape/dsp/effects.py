"""Effects stage: named effect specs from a scene -> pedalboard chains.

Input: ``EffectSpec`` values (validated by ``scene.py`` against ``EFFECTS`` below). Output: a
``pedalboard.Pedalboard``. The registry is plain data so a scene validates without importing
pedalboard; parameter names carry units the way pedalboard's do (``cutoff`` is in Hz).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import units
from ..units import show


@dataclass(frozen=True)
class Param:
    """One effect parameter: the pedalboard argument it feeds, its parser, default and range."""

    target: str
    parse: Callable[[Any], float]
    default: float
    low: float
    high: float
    unit: str
    description: str


@dataclass(frozen=True)
class EffectDef:
    plugin: str  # pedalboard class name
    description: str
    params: dict[str, Param]
    tail_s: Callable[[dict[str, float]], float] = lambda p: 0.0
    needs_ir: bool = False
    # the same input gives the same output whenever it comes (no LFO, no clock of its own):
    # fed a loop, the output settles into that loop (``mixer/element.py`` then repeats it)
    time_invariant: bool = True
    # how long the effect's state may go on changing without the output showing it (seconds;
    # None: its tail): a gate's envelope climbing under its threshold. A loop is copied only
    # once its output has repeated for this long (``mixer/steady.py``)
    memory_s: Callable[[dict[str, float]], float] | None = None


_HZ = dict(parse=units.parse_hz, low=10.0, high=40000.0, unit="Hz")
_GAIN = dict(parse=lambda v: units.parse_db(v), low=-48.0, high=48.0, unit="dB")
_UNIT_INTERVAL = dict(parse=units.parse_float, low=0.0, high=1.0, unit="")
_MS = dict(parse=units.parse_ms, low=0.0, high=10000.0, unit="ms")


def _envelope_memory_s(p: dict[str, float]) -> float:
    """A level detector's memory: JUCE's ballistics reach 99 % (-40 dB) of a step in the attack
    or release time; -90 dB (``mixer/steady.py``'s tolerance) takes 2.25 times as long, and
    3 times leaves room for the RMS averager before it."""
    return 3.0 * (p["attack"] + p["release"]) / 1000.0


def _p(target: str, default: float, description: str, **kw: Any) -> Param:
    return Param(target=target, default=default, description=description, **kw)


EFFECTS: dict[str, EffectDef] = {
    "reverb": EffectDef("Reverb", "Algorithmic room reverb (Freeverb).", {
        "room_size": _p("room_size", 0.5, "Room size, 0 (small) to 1 (huge).", **_UNIT_INTERVAL),
        "damping": _p("damping", 0.5, "High-frequency damping of the tail, 0..1.",
                      **_UNIT_INTERVAL),
        "wet": _p("wet_level", 0.33, "Level of the reverberated signal, 0..1.", **_UNIT_INTERVAL),
        "dry": _p("dry_level", 0.4, "Level of the direct signal, 0..1.", **_UNIT_INTERVAL),
        "width": _p("width", 1.0, "Stereo width of the tail, 0..1.", **_UNIT_INTERVAL),
    }, tail_s=lambda p: 1.0 + 8.0 * p["room_size"]),
    "convolution": EffectDef("Convolution", "Convolution reverb with an impulse-response file.", {
        "mix": _p("mix", 1.0, "Wet/dry mix, 0..1.", **_UNIT_INTERVAL),
    }, tail_s=lambda p: 10.0, needs_ir=True),
    "highpass": EffectDef("HighpassFilter", "Removes rumble below the cutoff (12 dB/oct).", {
        "cutoff": _p("cutoff_frequency_hz", 80.0, "Cutoff frequency, e.g. '120 Hz'.", **_HZ),
    }),
    "lowpass": EffectDef("LowpassFilter", "Darkens: removes content above the cutoff.", {
        "cutoff": _p("cutoff_frequency_hz", 8000.0, "Cutoff frequency, e.g. '8 kHz'.", **_HZ),
    }),
    "low_shelf": EffectDef("LowShelfFilter", "Boosts or cuts everything below the corner.", {
        "cutoff": _p("cutoff_frequency_hz", 200.0, "Corner frequency.", **_HZ),
        "gain": _p("gain_db", 0.0, "Boost (+) or cut (-) in dB.", **_GAIN),
        "q": _p("q", 0.7071, "Shelf slope (Q).", parse=units.parse_float, low=0.1, high=10.0,
                unit=""),
    }),
    "high_shelf": EffectDef("HighShelfFilter", "Boosts or cuts everything above the corner.", {
        "cutoff": _p("cutoff_frequency_hz", 4000.0, "Corner frequency.", **_HZ),
        "gain": _p("gain_db", 0.0, "Boost (+) or cut (-) in dB.", **_GAIN),
        "q": _p("q", 0.7071, "Shelf slope (Q).", parse=units.parse_float, low=0.1, high=10.0,
                unit=""),
    }),
    "peak": EffectDef("PeakFilter", "Bell EQ: boosts or cuts around a centre frequency.", {
        "cutoff": _p("cutoff_frequency_hz", 1000.0, "Centre frequency.", **_HZ),
        "gain": _p("gain_db", 0.0, "Boost (+) or cut (-) in dB.", **_GAIN),
        "q": _p("q", 0.7071, "Bandwidth (Q); higher is narrower.", parse=units.parse_float,
                low=0.1, high=30.0, unit=""),
    }),
    "compressor": EffectDef("Compressor", "Evens out levels above the threshold.", {
        "threshold": _p("threshold_db", -18.0, "Threshold in dB.", parse=units.parse_db,
                        low=-80.0, high=0.0, unit="dB"),
        "ratio": _p("ratio", 4.0, "Compression ratio, e.g. 4 for 4:1.", parse=units.parse_float,
                    low=1.0, high=100.0, unit=""),
        "attack": _p("attack_ms", 5.0, "Attack time, e.g. '5 ms'.", **_MS),
        "release": _p("release_ms", 100.0, "Release time, e.g. '100 ms'.", **_MS),
    }, memory_s=_envelope_memory_s),
    "delay": EffectDef("Delay", "Echo with feedback.", {
        "time": _p("delay_seconds", 0.3, "Delay time, e.g. '300 ms'.",
                   parse=units.parse_duration, low=0.001, high=10.0, unit="s"),
        "feedback": _p("feedback", 0.3, "Feedback, 0..0.95.", parse=units.parse_float, low=0.0,
                       high=0.95, unit=""),
        "mix": _p("mix", 0.3, "Wet/dry mix, 0..1.", **_UNIT_INTERVAL),
    }, tail_s=lambda p: p["time"] * (1 + math.log(1e-4) / math.log(max(p["feedback"], 1e-3)))),
    "chorus": EffectDef("Chorus", "Thickens with modulated delays.", {
        "rate": _p("rate_hz", 1.0, "Modulation rate in Hz.", parse=units.parse_hz, low=0.01,
                   high=100.0, unit="Hz"),
        "depth": _p("depth", 0.25, "Modulation depth, 0..1.", **_UNIT_INTERVAL),
        "centre_delay": _p("centre_delay_ms", 7.0, "Centre delay in ms.", parse=units.parse_ms,
                           low=0.1, high=100.0, unit="ms"),
        "feedback": _p("feedback", 0.0, "Feedback, 0..0.95.", parse=units.parse_float, low=0.0,
                       high=0.95, unit=""),
        "mix": _p("mix", 0.5, "Wet/dry mix, 0..1.", **_UNIT_INTERVAL),
    }, time_invariant=False),
    "phaser": EffectDef("Phaser", "Sweeping notches.", {
        "rate": _p("rate_hz", 1.0, "Sweep rate in Hz.", parse=units.parse_hz, low=0.01,
                   high=100.0, unit="Hz"),
        "depth": _p("depth", 0.5, "Sweep depth, 0..1.", **_UNIT_INTERVAL),
        "centre": _p("centre_frequency_hz", 1300.0, "Centre frequency.", **_HZ),
        "feedback": _p("feedback", 0.0, "Feedback, 0..0.95.", parse=units.parse_float, low=0.0,
                       high=0.95, unit=""),
        "mix": _p("mix", 0.5, "Wet/dry mix, 0..1.", **_UNIT_INTERVAL),
    }, time_invariant=False),
    "distortion": EffectDef("Distortion", "tanh saturation.", {
        "drive": _p("drive_db", 25.0, "Drive in dB.", parse=units.parse_db, low=0.0, high=80.0,
                    unit="dB"),
    }),
    "bitcrush": EffectDef("Bitcrush", "Lo-fi: reduces bit depth.", {
        "bits": _p("bit_depth", 8.0, "Bit depth, 1..32.", parse=units.parse_float, low=1.0,
                   high=32.0, unit="bits"),
    }),
    "pitch_shift": EffectDef("PitchShift", "Shifts pitch, keeps duration. Runs in "
                             "overlapping 30 s segments joined by 50 ms crossfades (it cannot "
                             "stream block by block).", {
        "semitones": _p("semitones", 0.0, "Shift in semitones, -72..72.",
                        parse=units.parse_float, low=-72.0, high=72.0, unit="st"),
    }, time_invariant=False),
    "gain": EffectDef("Gain", "Fixed gain.", {
        "gain": _p("gain_db", 0.0, "Gain in dB.", **_GAIN),
    }),
    "noise_gate": EffectDef("NoiseGate", "Mutes the signal below a threshold.", {
        "threshold": _p("threshold_db", -60.0, "Threshold in dB.", parse=units.parse_db,
                        low=-120.0, high=0.0, unit="dB"),
        "ratio": _p("ratio", 10.0, "Expansion ratio.", parse=units.parse_float, low=1.0,
                    high=100.0, unit=""),
        "attack": _p("attack_ms", 1.0, "Attack time.", **_MS),
        "release": _p("release_ms", 100.0, "Release time.", **_MS),
    }, memory_s=_envelope_memory_s),
}


# Plugins that give wrong output when called block by block with reset=False (measured against
# one whole-file call: pedalboard 0.9's PitchShift returns gaps of silence, as the delay line
# that primes it is cleared on every call); the mixer and the master run chains holding one of
# these in overlapping segments of one call each (``dsp.segments``).
WHOLE_TIMELINE = frozenset({"pitch_shift"})


def split_at_whole_timeline(specs: tuple[EffectSpec, ...]) \
        -> tuple[tuple[EffectSpec, ...], tuple[EffectSpec, ...]]:
    """The chain up to its last ``WHOLE_TIMELINE`` effect (run in segments) and the rest (which
    streams block by block, so a long tail after a pitch shift, a delay fed back for a
    minute, rings on across the segments' joins instead of being cut to their pre-roll).
    No such effect: ``((), specs)``."""
    last = max((i for i, fx in enumerate(specs) if fx.name in WHOLE_TIMELINE), default=-1)
    return specs[:last + 1], specs[last + 1:]


@dataclass(frozen=True)
class EffectSpec:
    """A validated effect: its registry name, parameters in registry units, optional IR file."""

    name: str
    params: tuple[tuple[str, float], ...]
    ir_path: str | None = None

    @property
    def tail_s(self) -> float:
        return max(0.0, EFFECTS[self.name].tail_s(dict(self.params)))


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def parse_effect(raw: Any, base_dir: Path | None) -> EffectSpec:
    """Validate one effect entry: ``'reverb'`` or ``{'lowpass': {'cutoff': '8 kHz'}}``.

    Raises:
        ValueError: unknown name or parameter (listing the valid ones), bad value, missing IR.
    """
    names = sorted(EFFECTS)
    if isinstance(raw, str):
        name, args = raw, {}  # type: ignore[var-annotated]
    elif isinstance(raw, dict) and len(raw) == 1:
        name, args = next(iter(raw.items()))
        if args is None:
            args = {}
    else:
        raise ValueError(f"{show(raw)} is not an effect; write a name such as 'reverb' or a "
                         f"mapping such as {{lowpass: {{cutoff: 8 kHz}}}}")
    if not isinstance(name, str) or name not in EFFECTS:
        raise ValueError(f"unknown effect {show(name)}; {_suggest(str(name), names)}"
                         f"valid effects: {', '.join(names)}")
    if not isinstance(args, dict):
        raise ValueError(f"the parameters of {name} must be a mapping such as "
                         f"{{{next(iter(EFFECTS[name].params), 'ir')}: ...}}, not {show(args)}")
    definition = EFFECTS[name]
    allowed = sorted(definition.params) + (["ir"] if definition.needs_ir else [])
    values: dict[str, float] = {k: p.default for k, p in definition.params.items()}
    ir_path: str | None = None
    for key, value in args.items():
        if key == "ir" and definition.needs_ir:
            if not isinstance(value, str):
                raise ValueError(f"{name}.ir: {show(value)} is not a file path")
            from ..audio_io import audio_file_problem, user_path

            path = user_path(value, base_dir)
            if not path.exists():
                raise ValueError(f"{name}.ir: impulse response {show(value)} not found "
                                 f"(looked at {path}); give a path relative to the scene file")

            problem = audio_file_problem(path)
            if problem is not None:
                raise ValueError(f"{name}.ir: impulse response {show(value)} {problem}")
            ir_path = str(path)
            continue
        if key not in definition.params:
            raise ValueError(f"{name} has no parameter {show(key)}; {_suggest(str(key), allowed)}"
                             f"valid parameters: {', '.join(allowed)}")
        p = definition.params[key]
        try:
            v = p.parse(value)
        except ValueError as e:
            raise ValueError(f"{name}.{key}: {e}") from None
        if not p.low <= v <= p.high:
            raise ValueError(f"{name}.{key}: {show(value)} is outside {p.low:g}..{p.high:g}"
                             f"{(' ' + p.unit) if p.unit else ''}")
        values[key] = v
    if definition.needs_ir and ir_path is None:
        raise ValueError(f"{name} needs an impulse response: add ir: path/to/ir.wav")
    return EffectSpec(name=name, params=tuple(sorted(values.items())), ir_path=ir_path)


def effect_json_schema() -> dict[str, Any]:
    """JSON Schema of one effect entry, generated from the registry."""
    variants: list[dict[str, Any]] = [{"type": "string", "enum": sorted(EFFECTS)}]
    for name, d in sorted(EFFECTS.items()):
        props: dict[str, Any] = {
            k: {"description": f"{p.description} Default {p.default:g}"
                               f"{(' ' + p.unit) if p.unit else ''}.",
                "anyOf": [{"type": "number"}, {"type": "string"}]}
            for k, p in d.params.items()
        }
        if d.needs_ir:
            props["ir"] = {"type": "string", "description": "Impulse response file, relative "
                                                             "to the scene file."}
        variants.append({
            "type": "object", "description": d.description, "additionalProperties": False,
            "required": [name],
            "properties": {name: {"anyOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": False, "properties": props}]}},
        })
    return {"anyOf": variants}


def build_board(specs: tuple[EffectSpec, ...]) -> Any:
    """A ``pedalboard.Pedalboard`` for the given specs (pedalboard is imported here, lazily)."""
    import pedalboard

    plugins = []
    for spec in specs:
        d = EFFECTS[spec.name]
        kwargs = {d.params[k].target: v for k, v in spec.params}
        if spec.name == "bitcrush":
            kwargs["bit_depth"] = float(kwargs["bit_depth"])
        if d.needs_ir:
            kwargs["impulse_response_filename"] = spec.ir_path  # type: ignore[assignment]
        plugins.append(getattr(pedalboard, d.plugin)(**kwargs))
    return pedalboard.Pedalboard(plugins)


def time_invariant(specs: tuple[EffectSpec, ...]) -> bool:
    """Whether the whole chain gives the same output for the same input whenever it comes."""
    return all(EFFECTS[s.name].time_invariant for s in specs)


def chain_memory_s(specs: tuple[EffectSpec, ...]) -> float:
    """How long the chain's state may go on changing unseen (seconds): what rings in it (its
    tail) and what its level detectors remember."""
    total = 0.0
    for s in specs:
        memory = EFFECTS[s.name].memory_s
        total += s.tail_s if memory is None else max(s.tail_s, memory(dict(s.params)))
    return total


def chain_tail_s(specs: tuple[EffectSpec, ...]) -> float:
    """How long the chain keeps sounding after its input stops (sum of tails, seconds)."""
    return sum(s.tail_s for s in specs)


NYQUIST_FRACTION = 0.45  # frequencies at or above this share of the rate alias or blow up


def check_effect_rates(specs: tuple[EffectSpec, ...] | list[EffectSpec], sample_rate: int,
                       where: str = "effects") -> list[str]:
    """One message per frequency parameter at or above ``NYQUIST_FRACTION`` x ``sample_rate``
    (pedalboard's filters turn such cutoffs into inf/NaN), empty if all are fine.

    ``where`` names the list in messages, e.g. ``elements.rain.effects`` gives
    ``elements.rain.effects[0].lowpass.cutoff: 9000 Hz is at or above 0.45 x the 16000 Hz
    sample rate (7200 Hz); ...``. Pure: the caller adds file:line and raises.
    """
    limit = NYQUIST_FRACTION * sample_rate
    problems = []
    for i, spec in enumerate(specs):
        for key, value in spec.params:
            if EFFECTS[spec.name].params[key].unit == "Hz" and value >= limit:
                problems.append(
                    f"{where}[{i}].{spec.name}.{key}: {value:g} Hz is at or above "
                    f"{NYQUIST_FRACTION:g} x the {sample_rate} Hz sample rate ({limit:g} Hz); "
                    f"set it below {limit:g} Hz or raise sample_rate")
    return problems
