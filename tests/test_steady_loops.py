"""A loop that settles is copied: an element that is one loop run through time-invariant effects
runs through its effects and meter until its output repeats, and the rest of its stem is that
period copied. The copied stem must equal the one computed all the way (to the sample for
filters, delays and dynamics; within the reverb's own rounding noise), its figures must be
those of the whole stem, and the work must really be skipped."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

import soundscape.mixer.element as element
from soundscape.arrange import ElementPlan, Keypoint, LoopRun
from soundscape.dsp.bus import Bus
from soundscape.dsp.effects import (
    EFFECTS,
    WHOLE_TIMELINE,
    EffectSpec,
    parse_effect,
    time_invariant,
)
from soundscape.dsp.meter import REPORTED_TRUE_PEAK, Meter
from soundscape.mixer.loops import LoopSource
from soundscape.mixer.workers import StemJob
from tests.conftest import wav

RATES = [22050, 44100, 48000, 96000]


def bed(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise with a tone on it (peaky and tonal: a copy that slips by a sample shows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.2 * np.sin(2 * np.pi * 441.7 * t)
    return (rng.normal(0, 0.08, (channels, t.size)) + tone).astype(np.float32)


def render(plan: ElementPlan, take: np.ndarray, sr: int, seconds: float, steady: bool,
           stem_s: float | None = None) -> tuple[np.ndarray, np.ndarray, Meter, int]:
    """(stem, sum, meter, frames the effects were given) of one element, copied when it settles
    (``steady``) or computed all the way."""
    total = int(seconds * sr)
    fed = [0]
    build = element.build_board

    class Counting:
        def __init__(self, board: object) -> None:
            self.board = board

        def __call__(self, x: np.ndarray, *a: object, **k: object) -> np.ndarray:
            fed[0] += x.shape[1]
            return self.board(x, *a, **k)  # type: ignore[operator]

    watch = element.steady_loop
    element.build_board = lambda fx: Counting(build(fx))  # type: ignore[assignment]
    if not steady:
        element.steady_loop = lambda *a: None  # type: ignore[assignment]
    try:
        bus = Bus(2, total, array=np.zeros((2, total), np.float32))
        got: list[np.ndarray] = []
        meter = element.render_element(plan, [take], sr, 2, total, bus,
                                       lambda b: got.append(b.copy()),
                                       None if stem_s is None else int(stem_s * sr))
    finally:
        element.build_board = build  # type: ignore[assignment]
        element.steady_loop = watch  # type: ignore[assignment]
    assert bus.array is not None
    return np.concatenate(got, axis=1), bus.array, meter, fed[0]


def copied_like_computed(plan: ElementPlan, take: np.ndarray, sr: int,
                         seconds: float) -> tuple[np.ndarray, Meter, float]:
    """Render ``plan`` copied and computed all the way; assert the copy is within -90 dB of the
    computed stem's peak (``TOLERANCE_DB``) and its meter reads the same loudness. Returns
    (the copied stem, its meter, the share of the frames its effects were given)."""
    stem, _, meter, fed = render(plan, take, sr, seconds, steady=True)
    ref, _, ref_meter, ref_fed = render(plan, take, sr, seconds, steady=False)
    peak = float(np.abs(ref).max())
    assert float(np.abs(stem - ref).max()) <= peak * 10 ** (-90 / 20)
    assert meter.integrated_loudness() == pytest.approx(ref_meter.integrated_loudness(),
                                                        abs=1e-3)
    assert meter.true_peak == pytest.approx(ref_meter.true_peak, rel=1e-4)
    return stem, meter, fed / ref_fed


def loop_plan(effects: tuple = (), crossfade_s: float = 1.0, fade_in_s: float = 0.0,
              fade_out_s: float = 0.0, end_s: float | None = None, pan: float = -0.3,
              automation: tuple[Keypoint, ...] = ()) -> ElementPlan:
    run = LoopRun("bed", 0, 0.0, end_s, None if end_s else 10_000, crossfade_s, fade_in_s,
                  fade_out_s, pan)
    return ElementPlan("bed", 4.0, loops=(run,), effects=effects, volume_db=-4.0,
                       automation=automation)


def effect(name: str, tmp_path: Path, sr: int, **params: object) -> EffectSpec:
    if name == "convolution":
        rng = np.random.default_rng(1)
        ir = rng.normal(0, 0.1, sr // 10) * np.exp(-np.arange(sr // 10) / (sr / 50))
        wav(tmp_path / "ir.wav", ir, sr)
        return parse_effect({name: {"ir": "ir.wav", **params}}, tmp_path)
    return parse_effect({name: params} if params else name, tmp_path)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_a_loop_run_repeats_itself_over_the_stretch_it_names(sr: int, channels: int) -> None:
    take = bed(sr, 3.1, channels)
    for xf, fin, fout, wraps in [(0.5, 0.0, 0.0, False), (0.0, 2.0, 3.0, False),
                                 (1.2, 0.3, 0.0, False), (0.5, 2.0, 2.0, True)]:
        run = LoopRun("x", 0, 0.0, 30.0, None, xf, fin, fout, 0.0, wraps=wraps)
        src = LoopSource(take, run, sr, 0)
        a, b = src.periodic()
        p = src.period
        assert 0 < a < b <= src.length and b - a > 5 * p
        whole = src.read(0, src.length)
        np.testing.assert_array_equal(whole[:, a + p:b], whole[:, a:b - p])
        # and hardly further: frames before it, and the first of the run's fade-out, differ
        # (the last of a fade-in's gains round to 1 in float32)
        differ = np.flatnonzero(np.any(whole[:, p:a - 1 + p + 1] != whole[:, :a], axis=0))
        assert differ.size and a - 1 - differ[-1] <= sr // 1000
        if fout:
            ms = sr // 1000
            assert np.any(whole[:, b:b + ms] != whole[:, b - p:b - p + ms])


@pytest.mark.parametrize("sr", RATES)
def test_meter_repeat_gives_the_figures_of_measuring_every_frame(sr: int) -> None:
    period = int(2.37 * sr)  # not a whole number of 100 ms quanta
    rng = np.random.default_rng(3)
    one = (rng.normal(0, 0.1, (1, period)) * np.linspace(0.2, 1.0, period)).astype(np.float32)
    one[0, period // 3] = 0.9  # a peak the repeat must keep
    intro = rng.normal(0, 0.02, (1, sr)).astype(np.float32)
    reps = 9
    signal = np.concatenate([intro, *[one] * reps], axis=1)
    gains = (0.6, 0.8)
    full = Meter(sr, 1, gains=gains, interpolator=REPORTED_TRUE_PEAK)
    for i in range(0, signal.shape[1], 50_000):
        full.add(signal[:, i:i + 50_000])
    full.finish()
    cut = Meter(sr, 1, gains=gains, interpolator=REPORTED_TRUE_PEAK)
    cut.retain(period)
    head = signal[:, :intro.shape[1] + 3 * period]
    for i in range(0, head.shape[1], 50_000):
        cut.add(head[:, i:i + 50_000])
    cut.repeat((reps - 3) * period)
    cut.finish()
    assert cut.frames == full.frames == signal.shape[1]
    assert len(cut.energies) == len(full.energies)
    np.testing.assert_allclose(cut.energies, full.energies, rtol=1e-5, atol=1e-9)
    assert abs(cut.integrated_loudness() - full.integrated_loudness()) < 1e-4
    assert cut.true_peak == pytest.approx(full.true_peak, rel=1e-6)
    assert cut.sample_peak == full.sample_peak
    stereo = np.array([gains[0] * signal[0], gains[1] * signal[0]])
    ref = pyloudnorm.Meter(sr).integrated_loudness(stereo.T.astype(np.float64))
    assert abs(cut.integrated_loudness() - ref) < 0.01


SETTLING = ["highpass", "lowpass", "low_shelf", "high_shelf", "peak", "compressor", "delay",
            "distortion", "bitcrush", "gain", "noise_gate", "convolution"]


@pytest.mark.parametrize("sr", [22050, 48000])
@pytest.mark.parametrize("name", SETTLING)
def test_a_settled_loop_is_copied_to_the_sample(tmp_path: Path, sr: int, name: str) -> None:
    assert EFFECTS[name].time_invariant
    plan = loop_plan((effect(name, tmp_path, sr),))
    take = bed(sr, 4.0)
    seconds = 90.0
    stem, mix, meter, fed = render(plan, take, sr, seconds, steady=True)
    ref_stem, ref_mix, ref_meter, ref_fed = render(plan, take, sr, seconds, steady=False)
    assert stem.shape == ref_stem.shape == (2, int(seconds * sr))
    peak = float(np.abs(ref_stem).max())
    # most settle to the bit; a shelf's or a convolution's float rounding may keep the last
    # bits moving (5e-7 of the peak measured): far under TOLERANCE_DB's -90 dB
    worst = float(np.abs(stem - ref_stem).max())
    assert worst <= peak * 4e-6, name
    np.testing.assert_array_equal(stem[:, :int(8 * sr)], ref_stem[:, :int(8 * sr)])
    np.testing.assert_allclose(mix, ref_mix, atol=peak * 4e-6, rtol=0, err_msg=name)
    assert ref_fed >= seconds * sr
    assert fed < 0.3 * ref_fed, name  # the effects ran for a few periods, not 90 s
    assert meter.integrated_loudness() == pytest.approx(ref_meter.integrated_loudness(),
                                                        abs=1e-4)
    assert meter.true_peak == ref_meter.true_peak and meter.sample_peak == ref_meter.sample_peak


@pytest.mark.parametrize("room", [0.7, 1.0])
@pytest.mark.parametrize("sr", RATES)
def test_a_reverb_is_copied_within_its_own_rounding_noise(tmp_path: Path, sr: int,
                                                          room: float) -> None:
    plan = loop_plan((effect("reverb", tmp_path, sr, room_size=room),), fade_in_s=1.0,
                     fade_out_s=2.0, end_s=80.0)
    stem, meter, fed = copied_like_computed(plan, bed(sr, 4.0), sr, 80.0)
    assert fed < 0.5  # it waits out the tail (9 s at room_size 1) once settled
    lufs = pyloudnorm.Meter(sr).integrated_loudness(stem.T.astype(np.float64))
    assert abs(meter.integrated_loudness() - lufs) < 0.05
    # the run's fades at its ends are computed, not copied: it starts from silence
    assert float(np.abs(stem[:, :16]).max()) < 1e-3


@pytest.mark.parametrize("name, params", [("chorus", {}), ("phaser", {}),
                                          ("delay", {"time": "10 s", "feedback": 0.95})])
def test_what_never_settles_is_computed_all_the_way(tmp_path: Path, name: str,
                                                    params: dict) -> None:
    sr = 22050
    plan = loop_plan((effect(name, tmp_path, sr, **params),))
    stem, _, _, fed = render(plan, bed(sr, 4.0), sr, 60.0, steady=True)
    ref, _, _, ref_fed = render(plan, bed(sr, 4.0), sr, 60.0, steady=False)
    assert fed == ref_fed
    np.testing.assert_array_equal(stem, ref)


def test_automation_and_one_shots_are_not_copied(tmp_path: Path) -> None:
    sr = 22050
    fx = (effect("lowpass", tmp_path, sr),)
    ramp = (Keypoint(0.0, 0.0), Keypoint(60.0, -12.0))
    plan = loop_plan(fx, automation=ramp)
    stem, _, _, fed = render(plan, bed(sr, 4.0), sr, 60.0, steady=True)
    ref, _, _, ref_fed = render(plan, bed(sr, 4.0), sr, 60.0, steady=False)
    assert fed == ref_fed
    np.testing.assert_array_equal(stem, ref)
    # the ramp is there: 12 dB down at the end
    head = float(np.sqrt(np.mean(stem[:, 5 * sr:10 * sr] ** 2)))
    tail = float(np.sqrt(np.mean(stem[:, 54 * sr:59 * sr] ** 2)))
    assert 20 * np.log10(head / tail) == pytest.approx(10.5, abs=1.0)


@pytest.mark.parametrize("fade_s", [2.0, 0.0])
def test_a_loopable_mix_copies_only_inside_the_stem(tmp_path: Path, fade_s: float) -> None:
    """The run goes on past the stem's end (the mix's overhang, folded onto the start): what
    lies past the stem is computed, the stem's figures are of the stem alone, and the sum
    equals the computed one."""
    sr = 44100
    run = LoopRun("bed", 0, 0.0, 62.0, None, 0.5, fade_s, fade_s, 0.0, wraps=fade_s > 0)
    plan = ElementPlan("bed", 4.0, loops=(run,), effects=(effect("delay", tmp_path, sr),))
    stem, mix, meter, fed = render(plan, bed(sr, 4.0), sr, 62.0, steady=True, stem_s=60.0)
    ref, ref_mix, ref_meter, ref_fed = render(plan, bed(sr, 4.0), sr, 62.0, steady=False,
                                              stem_s=60.0)
    assert stem.shape == (2, 60 * sr) and meter.frames == ref_meter.frames == 60 * sr
    np.testing.assert_array_equal(stem, ref)
    np.testing.assert_array_equal(mix, ref_mix)
    assert meter.energies == pytest.approx(ref_meter.energies, rel=1e-5)
    assert fed < 0.5 * ref_fed


def test_time_variant_effects_are_marked() -> None:
    varying = {n for n, d in EFFECTS.items() if not d.time_invariant}
    assert varying == {"chorus", "phaser", *WHOLE_TIMELINE}
    assert not time_invariant((parse_effect("chorus", Path(".")),))


def test_a_settling_loop_is_costed_as_the_few_periods_it_computes(tmp_path: Path) -> None:
    sr = 48000
    take = bed(sr, 8.0)
    fx = (effect("reverb", tmp_path, sr),)
    steady = StemJob(loop_plan(fx), [take], None, sr, 600.0)
    moving = StemJob(loop_plan((*fx, effect("chorus", tmp_path, sr))), [take], None, sr, 600.0)
    assert steady.steady and not moving.steady
    assert steady.cost < 0.3 * moving.cost


@pytest.mark.parametrize("time_s, mix, take_s", [(2.0, 1.0, 0.5), (2.5, 0.5, 1.0)])
@pytest.mark.parametrize("sr", [22050, 48000])
def test_an_echo_longer_than_the_loop_is_not_copied_before_it_settles(
        tmp_path: Path, sr: int, time_s: float, mix: float, take_s: float) -> None:
    """A delay longer than the loop's period holds its echo unheard: the output repeats its
    period before the first echo comes out (a copy made then drops the echo for the rest of the
    stem: 7 dB quieter, found by review 8), and once the echoes sound, their feedback settles by
    only a little each period (a copy made when two periods differ by -90 dB was -68 dB off).
    The watch waits out what the chain remembers (its tail)."""
    plan = loop_plan((effect("delay", tmp_path, sr, time=f"{time_s} s", feedback=0.5,
                             mix=mix),), crossfade_s=0.05)
    _, _, fed = copied_like_computed(plan, bed(sr, take_s), sr, 120.0)
    assert fed < 0.75  # it still settles, later (its tail, 29-36 s, after)


@pytest.mark.parametrize("name, params", [
    ("noise_gate", {"threshold": "-30 dB", "ratio": 4, "attack": "50 ms", "release": "10 s"}),
    ("compressor", {"threshold": "-40 dB", "ratio": 8, "attack": "50 ms", "release": "10 s"}),
])
@pytest.mark.parametrize("sr", [22050, 48000])
def test_dynamics_are_not_copied_while_their_envelope_still_moves(
        tmp_path: Path, sr: int, name: str, params: dict) -> None:
    """A burst, then a quiet stretch, looped through a gate that releases over 10 s: each
    burst lifts the gate's envelope a little, unseen while it stays under the threshold (the
    quiet stretch comes out gated, the same each period), until it opens the gate. A copy made
    before that kept the gate shut (found by review 8: -46.5 LUFS instead of -19.7). The watch
    waits out the envelope's attack and release."""
    plan = loop_plan((effect(name, tmp_path, sr, **params),), crossfade_s=0.05)
    take = bed(sr, 1.0, seed=3)
    take[:, take.shape[1] // 4:] *= 0.02
    _, _, fed = copied_like_computed(plan, take, sr, 150.0)
    assert fed < 0.6  # it still settles, later


@pytest.mark.parametrize("sr", [22050, 48000])
def test_every_run_shape_repeats_over_the_stretch_it_names(sr: int) -> None:
    """``periodic`` against the run read whole, over the shapes a scene makes: a number of
    ``times``, a run that starts late, one cut by the scene's end (``limit``), a hard cut that
    gets the declick crossfade, a crossfade clamped to the take, a short take, stereo."""
    rng = np.random.default_rng(4)
    compared = 0
    shapes = itertools.product([(0.3, 1), (1.0, 2)], [0.0, 0.01, 5.0], [(None, 7), (13.3, None)],
                               [0.0, 1.37], [0.0, 0.7], [None, 9.1])
    for (take_s, channels), xf, (end_s, times), start_s, fade_s, limit_s in shapes:
        t = np.arange(int(take_s * sr)) / sr
        take = (0.3 * np.sin(2 * np.pi * 331 * t)
                + rng.normal(0, 0.05, (channels, t.size))).astype(np.float32)
        run = LoopRun("x", 0, start_s, end_s, times, xf, fade_s, fade_s, 0.0)
        limit = None if limit_s is None else int(limit_s * sr)
        src = LoopSource(take, run, sr, int(round(start_s * sr)), limit)
        a, b = src.periodic()
        p = src.period
        if b - a <= p:
            continue
        compared += 1
        whole = src.read(0, src.length)
        np.testing.assert_array_equal(whole[:, a + p:b], whole[:, a:b - p])
    assert compared >= 80
