"""Arrangement stage: Scene + take lengths -> where every clip plays (timing only, no audio).

Input: a ``Scene`` and each element's take length in seconds (known before any audio exists:
``takes.planned_lengths``). Output: an ``Arrangement`` of frozen ``ElementPlan`` values that carry
everything the mixer needs (clips, loop runs, volume, automation, effects), so no later stage sees
the pydantic scene. Randomness (scatter) comes from a ``SeedSequence`` of the scene seed and the
element's name, so the same seed gives the same arrangement and one element's scatter never
changes because another element was added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .dsp.effects import EffectSpec
from .notices import RenderWarning
from .scene import Scene, derive_seed
from .units import format_duration


@dataclass(frozen=True)
class Clip:
    """One play of a take: scene time, position in the take, length, and per-play level/pan."""

    element: str
    take: int
    start_s: float
    offset_s: float
    length_s: float
    gain_db: float = 0.0
    pan: float = 0.0
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0


@dataclass(frozen=True)
class LoopRun:
    """A take repeated from ``start_s`` to ``end_s`` with crossfades (loop points are chosen
    by the mixer, which has the audio)."""

    element: str
    take: int
    start_s: float
    end_s: float | None  # None: exactly ``times`` repetitions
    times: int | None
    crossfade_s: float
    fade_in_s: float
    fade_out_s: float
    pan: float
    wraps: bool = False  # a loopable mix's run over the whole scene: it crossfades into itself


@dataclass(frozen=True)
class Keypoint:
    """Volume automation: ``level_db`` (added to the volume) at scene time ``time_s``."""

    time_s: float
    level_db: float


@dataclass(frozen=True)
class ScatterRule:
    """How the scene scatters an element's one-shots (its ``scatter:``), for exports that let an
    engine play them live; the clips themselves are already placed."""

    interval_s: tuple[float, float] | None  # min and max time between starts
    density_per_min: float | None  # or: one-shots per minute on average
    count: int | None
    start_s: float
    end_s: float | None
    level_jitter_db: float
    pan_jitter: float
    overlap: bool


@dataclass(frozen=True)
class ElementPlan:
    """One element on the timeline, with the settings the mixer applies to its whole stem and
    what the exports and tags need to know of it (its fades, pan, scatter rule and what it
    plays), so no stage after the arrangement reads the scene."""

    name: str
    take_length_s: float
    clips: tuple[Clip, ...] = ()
    loops: tuple[LoopRun, ...] = ()
    volume_db: float = 0.0
    automation: tuple[Keypoint, ...] = ()  # sorted by time
    effects: tuple[EffectSpec, ...] = ()
    pan: float = 0.0  # the element's own (clips and runs carry their per-play pan)
    fade_in_s: float = 0.0  # the element's fades, as each one-shot plays them
    fade_out_s: float = 0.0
    scatter: ScatterRule | None = None
    prompt: str | None = None  # what it plays: a prompt, or a recording
    file: str | None = None

    @property
    def pans(self) -> set[float]:
        return {c.pan for c in self.clips} | {lp.pan for lp in self.loops}


@dataclass(frozen=True)
class SceneInfo:
    """Which scene an arrangement belongs to, for the files and records written from it."""

    name: str
    variant: str | None
    label: str  # name[/variant], as messages say it
    file: str | None  # the scene file, when it came from one
    seed: int
    description: str | None
    exports: tuple[str, ...]  # what the scene asks every render to export

    @classmethod
    def of(cls, scene: Scene) -> SceneInfo:
        return cls(scene.name, scene.variant, scene.label,
                   str(scene.path) if scene.path else None, scene.seed, scene.description,
                   tuple(scene.exports))


@dataclass(frozen=True)
class Arrangement:
    scene: SceneInfo
    duration_s: float
    sample_rate: int
    channels: int
    elements: tuple[ElementPlan, ...]
    warnings: tuple[RenderWarning, ...] = field(default=())

    def plan(self, name: str) -> ElementPlan:
        return next(p for p in self.elements if p.name == name)


def element_rng(scene: Scene, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([scene.seed, derive_seed(0, name)]))


def _warn(warnings: list[RenderWarning], name: str, message: str, old: float | None = None,
          limit: float | None = None, new: float | None = None) -> None:
    warnings.append(RenderWarning("arrange", message, name, old, limit, new))


def _cut(name: str, start: float, length: float, duration: float,
         warnings: list[RenderWarning], overhang: float = 0.0) -> float | None:
    if start >= duration:
        _warn(warnings, name, f"{name} at {start:.1f} s starts after the {duration:.1f} s scene "
              f"ends; skipped", start, duration)
        return None
    if overhang and start + length > duration + overhang + 1e-9:
        # a loopable mix hears the overhang at its start: longer plays fade out over it
        new = duration + overhang - start
        _warn(warnings, name, f"{name} at {start:.1f} s + {length:.1f} s rings past the loop's "
              f"{overhang:.1f} s wrap; faded out over it, {new:.1f} s", length, new, new)
        return new
    if overhang:
        return length
    if start + length > duration + 1e-9:
        new = duration - start
        _warn(warnings, name, f"{name} at {start:.1f} s + {length:.1f} s exceeds the "
              f"{duration:.1f} s scene; trimmed to {new:.1f} s", length, duration - start, new)
        return new
    return length


def _fade_out(scene: Scene, start: float, length: float, full: float, fade: float) -> float:
    """A play's fade-out: the element's, or in a loopable mix, when the play was cut at the
    end of the stretch that is folded onto the start, a fade over that stretch (no step)."""
    x = scene.master.loopable
    if x and length < full - 1e-9 and start + length >= scene.duration + x - 1e-9:
        fade = max(fade, min(x, length))
    return min(fade, length)


def arrange(scene: Scene, take_lengths_s: dict[str, float]) -> Arrangement:
    """Place every element of ``scene`` on the timeline.

    Args:
        scene: a validated scene (variant already resolved).
        take_lengths_s: each element's take length in seconds.
    """
    warnings: list[RenderWarning] = []
    plans = []
    D = scene.duration
    for name, e in scene.elements.items():
        L = take_lengths_s[name]
        clips: list[Clip] = []
        loops: list[LoopRun] = []
        if e.loop is not None:
            lp = e.loop
            xf = min(lp.crossfade, L / 2)
            if xf < lp.crossfade:
                _warn(warnings, name, f"{name}: crossfade {lp.crossfade:.2f} s is more than half "
                      f"the {L:.2f} s take; shortened to {xf:.2f} s", lp.crossfade, L / 2, xf)
            end: float | None = lp.until if lp.until is not None else (
                None if lp.times is not None else D)
            if lp.times is not None:
                nominal_end = lp.start + lp.times * (L - xf) + xf
                if nominal_end > D + 1e-9:
                    _warn(warnings, name, f"{name} loop at {lp.start:.1f} s + "
                          f"{nominal_end - lp.start:.1f} s exceeds the {D:.1f} s scene; trimmed "
                          f"to {D - lp.start:.1f} s", nominal_end - lp.start, D - lp.start,
                          D - lp.start)
                    end = D
            if end is not None and end > D:
                _warn(warnings, name, f"{name} loop until {end:.1f} s exceeds the {D:.1f} s "
                      f"scene; trimmed to {D - lp.start:.1f} s", end, D, D)
                end = D
            if lp.start >= D:
                _warn(warnings, name, f"{name} loop at {lp.start:.1f} s starts after the "
                      f"{D:.1f} s scene ends; skipped", lp.start, D)
            else:
                loops.append(LoopRun(name, 0, lp.start, end, lp.times if end is None else None,
                                     xf, e.fade_in, e.fade_out, e.pan))
        elif e.scatter is not None:
            clips.extend(_scatter(scene, name, L, warnings))
        else:
            for t in e.starts_s:
                length = _cut(name, t, L, D, warnings, scene.master.loopable or 0.0)
                if length is not None:
                    clips.append(Clip(name, 0, t, 0.0, length, 0.0, e.pan, e.fade_in,
                                      _fade_out(scene, t, length, L, e.fade_out)))
        auto = tuple(sorted((Keypoint(k.time, max(k.level, -120.0)) for k in e.automation),
                            key=lambda k: k.time_s))
        sc = e.scatter
        rule = None if sc is None else ScatterRule(
            None if sc.interval is None else (sc.interval[0], sc.interval[1]), sc.density,
            sc.count, sc.start, sc.end, sc.level_jitter, sc.pan_jitter, sc.overlap)
        plans.append(ElementPlan(name, L, tuple(clips), tuple(loops),
                                 -math.inf if e.mute else e.volume, auto,
                                 tuple(e.effects), e.pan, e.fade_in, e.fade_out, rule, e.prompt,
                                 e.file))
    arr = Arrangement(SceneInfo.of(scene), D, scene.sample_rate, scene.channels, tuple(plans),
                      tuple(warnings))
    return wrap_around(arr, scene.master.loopable) if scene.master.loopable else arr


def _scatter(scene: Scene, name: str, L: float, warnings: list[RenderWarning]) -> list[Clip]:
    e = scene.elements[name]
    sc = e.scatter
    assert sc is not None
    rng = element_rng(scene, name)
    end = min(sc.end if sc.end is not None else scene.duration, scene.duration)
    clips: list[Clip] = []

    def gap() -> float:
        if sc.interval is not None:
            return float(rng.uniform(sc.interval[0], sc.interval[1]))
        return float(rng.exponential(60.0 / sc.density))  # type: ignore[operator]

    if sc.interval is not None and not sc.overlap and sc.interval[1] < L:
        _warn(warnings, name, f"{name}: one-shots of {L:.1f} s are longer than the largest "
              f"interval {sc.interval[1]:.1f} s; spacing them {L:.1f} s apart (set overlap: true "
              f"to allow overlap)", sc.interval[1], L, L)
    t = sc.start + float(rng.uniform(0.0, 1.0)) * gap()
    while t < end and (sc.count is None or len(clips) < sc.count):
        take = int(rng.integers(e.variations))
        jitter_db = float(rng.uniform(-sc.level_jitter, sc.level_jitter))
        pan = float(np.clip(e.pan + rng.uniform(-sc.pan_jitter, sc.pan_jitter), -1.0, 1.0))
        length = min(L, scene.duration + (scene.master.loopable or 0.0) - t)
        clips.append(Clip(name, take, t, 0.0, length, jitter_db, pan, min(e.fade_in, length),
                          _fade_out(scene, t, length, L, e.fade_out)))
        step = gap()
        if not sc.overlap:
            step = max(step, L)
        t += step
    if sc.count is not None and len(clips) < sc.count:
        _warn(warnings, name, f"{name}: only {len(clips)} of {sc.count} one-shots fit between "
              f"{sc.start:.1f} s and {end:.1f} s", sc.count, None, len(clips))
    return clips


def describe(arr: Arrangement) -> list[str]:
    """A readable timeline, one line per play."""
    lines = [f"{format_duration(arr.duration_s)} at {arr.sample_rate} Hz, "
             f"{arr.channels} channel(s)"]
    for plan in arr.elements:
        lines.append(f"{plan.name}  (take {plan.take_length_s:.2f} s)")
        for lp in plan.loops:
            end = "scene end" if lp.end_s is None and lp.times is None else (
                f"{lp.end_s:.2f} s" if lp.end_s is not None else f"{lp.times} times")
            lines.append(f"  loop  {lp.start_s:8.2f} s -> {end}, crossfade {lp.crossfade_s:.2f} s")
        for c in plan.clips:
            extra = ""
            if c.gain_db:
                extra += f" {c.gain_db:+.1f} dB"
            if c.pan:
                extra += f" pan {c.pan:+.2f}"
            lines.append(f"  play  {c.start_s:8.2f} s -> {c.start_s + c.length_s:8.2f} s  "
                         f"take {c.take}{extra}")
        if not plan.loops and not plan.clips:
            lines.append("  (nothing plays)")
    return lines


def wrap_around(arr: Arrangement, crossfade_s: float) -> Arrangement:
    """The arrangement of a loopable mix, whose frames past the end are added onto its start
    (``Bus.fold``): loop runs that reach the end play on ``crossfade_s`` past it, fading out
    over that stretch, and those that also start the scene fade in over it, so the run
    crossfades into itself at the wrap (the element's own fades there are dropped). One-shots
    and effect tails ring on past the end and are heard at the start."""
    end = arr.duration_s

    def run(r: LoopRun) -> LoopRun:
        if r.end_s is None or r.end_s < end - 1e-9:
            return r
        r = replace(r, end_s=end + crossfade_s, fade_out_s=crossfade_s)
        return replace(r, fade_in_s=crossfade_s, wraps=True) if r.start_s <= 1e-9 else r

    return replace(arr, elements=tuple(replace(p, loops=tuple(map(run, p.loops)))
                                       for p in arr.elements))
