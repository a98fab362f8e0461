"""The streaming meter against pyloudnorm and known answers; block-wise loops; parallel stems."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from soundscape.arrange import LoopRun
from soundscape.audio_io import read_audio
from soundscape.dsp.meter import TRUE_PEAK, Meter, measure
from soundscape.dsp.stereo import pan_gains, to_channels
from soundscape.master import LIMITER_DETECTOR
from soundscape.mixer.loops import LoopSource
from soundscape.mixer.workers import plan_groups
from soundscape.pipelines.render import render
from tests.conftest import wav
from tests.oracles import render_loop

SR = 48000


RATES = [22050, 44100, 48000, 96000]


def _signals(sr: int = SR, seconds: float = 12.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(int(sr * seconds)) / sr
    bursts = rng.normal(0, 0.2, (2, t.size)) * ((t % 3.0) < 0.7)  # gating has work to do
    rumble = 0.4 * np.sin(2 * np.pi * 35 * t)[None]  # the K-weighting high-pass matters
    uneven = np.stack([rng.normal(0, 0.05, t.size), 0.3 * np.sin(2 * np.pi * 3000 * t)])
    return {"bursts": bursts, "rumble": rumble, "uneven": uneven}


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("name", ["bursts", "rumble", "uneven"])
def test_loudness_matches_pyloudnorm(name: str, sr: int, channels: int) -> None:
    x = _signals(sr, 7.0)[name].astype(np.float32)
    x = np.resize(x, (channels, x.shape[1]))  # mono: the first channel; stereo: both
    ours = measure(x, sr).integrated_loudness()
    ref = pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64))
    assert ours == pytest.approx(ref, abs=1e-3)  # measured: within 1.2e-4 (rumble at 96 kHz)


def test_meter_does_not_depend_on_block_sizes() -> None:
    x = _signals()["bursts"].astype(np.float32)
    whole = measure(x, SR, block=x.shape[1])
    m = Meter(SR, 2)
    rng = np.random.default_rng(0)
    pos = 0
    while pos < x.shape[1]:
        n = int(rng.integers(1, 20000))
        m.add(x[:, pos:pos + n])
        pos += n
    m.finish()
    assert m.integrated_loudness() == pytest.approx(whole.integrated_loudness(), abs=1e-6)
    assert m.true_peak == pytest.approx(whole.true_peak, rel=1e-6)


@pytest.mark.parametrize("channels", [1, 2])  # the mixes we write
def test_blocks_shorter_than_the_channels_are_read_the_right_way_round(channels: int) -> None:
    """pedalboard tells channels from frames by the shorter axis: a meter's first blocks of
    one or two frames (a signal that short, or the last of a batch) must still be channels."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.2, (channels, SR)).astype(np.float32)
    x[:, :3] = [0.5, -0.5, 0.25]  # loud first frames: a misread block shows
    whole = measure(x, SR)
    m = Meter(SR, channels)
    for n in (1, 1, 2, 3):  # measured one by one: each finish() flushes what is queued
        m._measure(x[:, m.frames:m.frames + n])
    m.add(x[:, m.frames:])
    m.finish()
    assert m.energies == pytest.approx(whole.energies, rel=1e-6)
    ref = pyloudnorm.Meter(SR).integrated_loudness(x.T.astype(np.float64))
    assert m.integrated_loudness() == pytest.approx(ref, abs=1e-3)


def test_silence_between_sounds_keeps_the_filter_ringing_into_it() -> None:
    """A silent stretch after a sound is still filtered (the K-weighting rings on), and
    skipped only once the filter has come to rest: the same energies as measured whole."""
    t = np.arange(SR * 4) / SR
    x = (0.5 * np.sin(2 * np.pi * 40 * t) * (t < 1.0)).astype(np.float32)[None]
    x[:, 3 * SR:] = 0.3
    whole = Meter(SR, 1)
    whole._measure(x)
    m = Meter(SR, 1)
    for start in range(0, x.shape[1], 4800):
        m._measure(x[:, start:start + 4800])
    assert m.energies == pytest.approx(whole.energies, rel=1e-6, abs=1e-12)
    assert m.energies[10] > 0  # the tail after the tone's end, which a skip would lose
    ref = pyloudnorm.Meter(SR).integrated_loudness(x.T.astype(np.float64))
    assert m.finish().integrated_loudness() == pytest.approx(ref, abs=1e-3)


def test_a_meter_is_sent_to_another_process_fresh_or_finished_only() -> None:
    import pickle

    x = _signals()["bursts"].astype(np.float32)
    fresh = pickle.loads(pickle.dumps(Meter(SR, 2)))
    fresh.add(x)
    assert fresh.finish().integrated_loudness() == measure(x, SR).integrated_loudness()
    part = Meter(SR, 2)
    part._measure(x[:, :SR // 2])  # stopped inside a burst: the filter rings
    with pytest.raises(TypeError, match="part-way through a signal"):
        pickle.dumps(part)
    done = pickle.loads(pickle.dumps(part.finish()))
    assert done.integrated_loudness() == part.integrated_loudness()
    with pytest.raises(RuntimeError, match="measures no more"):
        done._measure(x[:, :SR])


def test_mono_measured_before_the_pan_equals_the_panned_stereo() -> None:
    x = _signals()["uneven"][:1].astype(np.float32)
    gl, gr = pan_gains(0.4)
    stereo = measure(to_channels(x, 0.4, 2) * np.float32(0.5), SR)
    mono = Meter(SR, 1, gains=(gl * 0.5, gr * 0.5))
    mono.add(x)
    mono.finish()
    assert mono.integrated_loudness() == pytest.approx(stereo.integrated_loudness(), abs=1e-4)
    assert mono.true_peak == pytest.approx(stereo.true_peak, rel=1e-5)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", RATES)
def test_true_peak_finds_the_peak_between_samples(sr: int, channels: int) -> None:
    # fs/4 sine at 45 degrees: every sample is +-0.707, the waveform peaks at 1.0 between them
    n = np.arange(sr)
    ramp = np.minimum(1.0, np.minimum(n, sr - n) / (sr // 10))  # no overshoot at the edges
    x = np.tile(ramp * np.sin(2 * np.pi * n / 4 + np.pi / 4), (channels, 1)).astype(np.float32)
    m = measure(x, sr)
    assert 20 * math.log10(m.sample_peak) == pytest.approx(-3.01, abs=0.01)
    assert m.true_peak_db == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize("interp", [TRUE_PEAK, LIMITER_DETECTOR], ids=["meter", "limiter"])
def test_skipping_gaps_never_changes_the_true_peak(interp: object) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.05, (2, 50000)).astype(np.float32)
    x[:, rng.integers(0, 50000, 40)] = rng.uniform(-1, 1, (2, 40))  # transients
    ip = interp  # type: ignore[assignment]
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))  # type: ignore[attr-defined]
    brute = float(ip.gap_peaks(ext, -1.0).max())  # type: ignore[attr-defined]
    m = measure(x, SR, interpolator=ip)  # type: ignore[arg-type]
    assert m.true_peak == pytest.approx(max(brute, float(np.abs(x).max())), rel=1e-6)
    env = ip.envelope(x, floor=0.5)  # type: ignore[attr-defined]
    full = ip.envelope(x, floor=-1.0)  # type: ignore[attr-defined]
    over = full > 0.5
    np.testing.assert_array_equal(env[over], full[over])  # exact wherever it matters
    assert np.all(env[~over] <= 0.5)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [16000, *RATES])
def test_loop_read_in_blocks_equals_whole(sr: int, channels: int) -> None:
    rng = np.random.default_rng(5)
    take = rng.normal(0, 0.1, (channels, sr * 2)).astype(np.float32)
    take[:, : sr // 5] *= np.linspace(0, 1, sr // 5, dtype=np.float32)  # the loop starts later
    run = LoopRun("x", 0, 0.0, 9.0, None, 0.3, 0.5, 1.0, 0.0)
    whole = render_loop(take, run, sr, sr * 9)
    src = LoopSource(take, run, sr, 0)
    assert src.points.start > 0
    cuts = sorted({0, 1, 777, 5000, sr, src.points.end, src.points.end + 1, 40000, 100000,
                   sr * 9})
    parts = np.concatenate([src.read(a, b) for a, b in zip(cuts, cuts[1:], strict=False)],
                           axis=1)
    np.testing.assert_array_equal(parts, whole)
    assert abs(whole[0, 0]) < 1e-3 and abs(whole[0, -1]) < 1e-3  # the run's own fades


def test_groups_are_balanced_and_deterministic() -> None:
    class Job:
        def __init__(self, cost: float) -> None:
            self.cost = cost

    jobs = [Job(c) for c in (5, 1, 1, 4, 2, 2, 1)]
    groups = plan_groups(jobs, 2)  # type: ignore[arg-type]
    assert groups == plan_groups(jobs, 2)  # type: ignore[arg-type]
    assert sorted(i for g in groups for i in g) == list(range(7))
    loads = [sum(jobs[i].cost for i in g) for g in groups]
    assert abs(loads[0] - loads[1]) <= 1
    assert all(g == sorted(g) for g in groups)


def _stereo_scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.1, (2, 22050 * 3)), 22050)
    wav(tmp_path / "drip.wav", rng.normal(0, 0.3, 4000) * np.hanning(4000), 16000)
    scene = tmp_path / "s.yaml"
    scene.write_text("""\
name: s
duration: 20 s
elements:
  bed: {file: bed.wav, loop: {crossfade: 500 ms}, pan: 1, effects: [reverb]}
  drip: {file: drip.wav, scatter: {interval: [1 s, 3 s], pan_jitter: 0.8}, effects: [delay]}
  hum:
    file: bed.wav
    loop: {crossfade: 1 s}
    volume: -12 dB
    effects: [{lowpass: {cutoff: 300 Hz}}]
master: {loudness: -20 LUFS}
""")
    return scene


def test_stereo_file_balance_follows_pan(tmp_path: Path) -> None:
    [res] = render(_stereo_scene(tmp_path), out=tmp_path / "o", bit_depth=32, jobs=1)
    bed, _ = read_audio(res.stems["bed"])
    assert np.abs(bed[0]).max() < 1e-6 < np.abs(bed[1]).max()  # pan 1: left side silent


def test_worker_processes_render_the_same_stems_and_mix(tmp_path: Path) -> None:
    scene = _stereo_scene(tmp_path)
    [one] = render(scene, out=tmp_path / "one", bit_depth=32, jobs=1)
    [two] = render(scene, out=tmp_path / "two", bit_depth=32, jobs=2)
    for name in ("bed", "drip", "hum"):
        a, _ = read_audio(one.stems[name])
        b, _ = read_audio(two.stems[name])
        np.testing.assert_array_equal(a, b)
    ma, _ = read_audio(one.mix)
    mb, _ = read_audio(two.mix)
    np.testing.assert_allclose(ma, mb, atol=1e-6)  # summation order differs, nothing else
    ja, jb = (json.loads(r.manifest_path.read_text()) for r in (one, two))
    assert [e["loudness_lufs"] for e in ja["elements"]] == \
        [e["loudness_lufs"] for e in jb["elements"]]
    assert ja["mix"]["loudness_lufs"] == pytest.approx(-20, abs=0.5)
    [again] = render(scene, out=tmp_path / "again", bit_depth=32, jobs=2)
    np.testing.assert_array_equal(read_audio(again.mix)[0], mb)  # same jobs: same bits


def test_latency_effects_stream_without_gaps(tmp_path: Path) -> None:
    # pedalboard's PitchShift returns ~14k of the first 64k frames and catches up later; the
    # output must follow on seamlessly, not be padded with silence block by block
    t = np.arange(48000 * 2) / 48000
    wav(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 48000)
    scene = tmp_path / "p.yaml"
    scene.write_text("""\
name: p
duration: 6 s
elements:
  tone: {file: tone.wav, loop: {crossfade: 200 ms}, effects: [{pitch_shift: {semitones: 5}}]}
master: {loudness: off, ceiling: 0}
""")
    [res] = render(scene, out=tmp_path / "o", bit_depth=32, jobs=1)
    stem, sr = read_audio(res.stems["tone"])
    assert stem.shape == (2, 6 * sr)
    body = stem[0, int(0.3 * sr):int(5.7 * sr)]
    rms = np.sqrt((body[: body.size // 960 * 960].reshape(-1, 960) ** 2).mean(axis=1))
    assert rms.min() > 0.5 * np.median(rms)


def test_every_streamed_effect_matches_one_whole_call(tmp_path: Path) -> None:
    from soundscape.dsp.effects import EFFECTS, WHOLE_TIMELINE, build_board, parse_effect

    rng = np.random.default_rng(1)
    wav(tmp_path / "ir.wav", rng.normal(0, 0.1, 4800) * np.exp(-np.arange(4800) / 800), SR)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR * 3) / SR))[None].astype(np.float32)
    for name in sorted(set(EFFECTS) - WHOLE_TIMELINE):
        spec = parse_effect({name: {"ir": "ir.wav"}} if name == "convolution" else name,
                            tmp_path)
        whole = build_board((spec,))(x, SR)
        board = build_board((spec,))
        parts = np.concatenate([board(x[:, i:i + 65536], SR, reset=False)
                                for i in range(0, x.shape[1], 65536)], axis=1)
        assert parts.shape == whole.shape, name
        np.testing.assert_allclose(parts, whole, atol=1e-6, err_msg=name)


def test_a_stem_over_full_scale_warns_unless_float(tmp_path: Path) -> None:
    wav(tmp_path / "loud.wav", 0.9 * np.sin(2 * np.pi * 100 * np.arange(SR) / SR), SR)
    scene = tmp_path / "l.yaml"
    scene.write_text("name: l\nduration: 2 s\nelements:\n"
                     "  loud: {file: loud.wav, loop: true, volume: +6 dB}\n")
    [res] = render(scene, out=tmp_path / "o")
    [warning] = [w for w in res.warnings if w.stage == "mix"]
    assert warning.element == "loud" and warning.limit == 1.0 and warning.new > 1.0
    assert "stem loud peaks at +" in warning.message and "--bit-depth 32" in warning.message
    [res] = render(scene, out=tmp_path / "f", bit_depth=32)
    assert not any("stem loud" in w.message for w in res.warnings)
    stem, _ = read_audio(res.stems["loud"])
    assert np.abs(stem).max() > 1.0  # float stems keep what is over full scale


def test_interrupted_parallel_mix_leaves_no_partial_files(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(4)
    wav(tmp_path / "n.wav", rng.normal(0, 0.1, 48000 * 4), 48000)
    lines = ["name: long", "duration: 5:00", "elements:"]
    lines += [f"  e{i}: {{file: n.wav, loop: true, effects: [reverb]}}" for i in range(6)]
    scene = tmp_path / "long.yaml"
    scene.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "soundscape", "render", str(scene),
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob(".*.tmp.wav")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    # 130, or death by SIGINT when the interrupt lands while worker processes start: a shell
    # reports both as 130
    assert proc.returncode in (130, -signal.SIGINT), err[-3000:]
    assert err.strip().splitlines()[-1].startswith("Interrupted;")
    assert not list(out.rglob(".*tmp*"))
    assert not (out / "long" / "mix.wav").exists()
    for stem in out.rglob("*.wav"):  # whatever was finished is whole
        audio, sr = read_audio(stem)
        assert audio.shape == (2, 300 * sr)


def test_worker_killed_mid_stem_leaves_no_temp(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies while writing its stem (terminated by a broken pool, or kill -9)
    cannot clean up after itself: the render does, and says what happened."""
    import os
    import signal

    from soundscape.errors import RenderError
    from soundscape.mixer import workers as stems

    rng = np.random.default_rng(5)
    wav(tmp_path / "n.wav", rng.normal(0, 0.1, 48000), 48000)
    scene = tmp_path / "s.yaml"
    scene.write_text("name: s\nduration: 20\nelements:\n"
                     + "".join(f"  e{i}: {{file: n.wav, loop: true}}\n" for i in range(3)))
    parent = os.getpid()
    real = stems.render_element

    def dying(plan, takes, sample_rate, channels, total, mix, sink, *rest):  # type: ignore[no-untyped-def]
        if os.getpid() == parent or sink is None:
            return real(plan, takes, sample_rate, channels, total, mix, sink, *rest)
        sink(np.zeros((channels, 4800), np.float32))  # the temporary stem now exists
        import time
        time.sleep(0.5)  # let the writer thread put it on disk
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(stems, "render_element", dying)
    with pytest.raises(RenderError, match="worker process died"):
        render(scene, out=tmp_path / "o", jobs=2)
    assert not list((tmp_path / "o").rglob(".*tmp*"))


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_meters_of_parts_of_the_channels_read_as_one_of_them_all(sr: int, channels: int) -> None:
    """``Meter.of_channels``: the edit's sum is K-weighted half its channels to a process; the
    parts joined read the loudness of one meter over every channel (and pyloudnorm's), and its
    peaks."""
    rng = np.random.default_rng(channels)
    n = sr * 3
    t = np.arange(n) / sr
    x = np.stack([rng.normal(0, 0.05 * (c + 1), n) + 0.3 * np.sin(2 * np.pi * 220 * (c + 1) * t)
                  * (t > 0.5 * c) for c in range(channels)]).astype(np.float32)
    whole = Meter(sr, channels, true_peak=False)
    whole.add(x)
    whole.finish()
    half = (channels + 1) // 2
    parts = []
    for rows in (slice(0, half), slice(half, channels)):
        m = Meter(sr, x[rows].shape[0], true_peak=False)
        for i in range(0, n, 10007):  # blocks of an odd size, as a reading process gets them
            m.add(x[rows, i:i + 10007])
        parts.append(m.finish())
    joined = Meter.of_channels(parts)
    assert joined.integrated_loudness() == pytest.approx(whole.integrated_loudness(), abs=1e-5)
    if channels <= 3:  # pyloudnorm weighs a fourth and fifth channel as surrounds (1.41)
        ref = pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64))
        assert joined.integrated_loudness() == pytest.approx(ref, abs=0.01)
    np.testing.assert_allclose(joined.energies, whole.energies, rtol=1e-6)
    assert joined.sample_peak == whole.sample_peak == float(np.abs(x).max())
    assert joined.frames == whole.frames == n
    with pytest.raises(ValueError, match="different lengths"):
        Meter.of_channels([parts[0], Meter.restored(sr, parts[1].energies[:-1], n, 0.1, 0.1)])
