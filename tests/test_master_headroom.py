"""Takes without DC and a master that never brick-walls to reach its target (issue 23, item 1).

Measured with tools that are not ours: pyloudnorm for loudness, scipy's 8x ``resample_poly``
for true peak, numpy for DC and the spread of 400 ms levels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from scipy.signal import resample_poly

from soundscape.audio_io import read_audio
from soundscape.master import MAX_LIMITING_DB, ElementLevels
from soundscape.outputs.manifest import read_manifest
from soundscape.pipelines.render import render
from soundscape.takes.conform import conform
from tests.conftest import wav
from tests.oracles import master

RATES = [22050, 44100, 48000, 96000]


def tp8(x: np.ndarray) -> float:
    up = resample_poly(x.astype(np.float64), 8, 1, axis=1)
    return 20 * math.log10(max(float(np.abs(up).max()), float(np.abs(x).max())))


def lufs(x: np.ndarray, sr: int) -> float:
    return float(pyloudnorm.Meter(sr).integrated_loudness(x.T.astype(np.float64)))


def spread_400ms(x: np.ndarray, sr: int) -> float:
    """Spread of the 400 ms levels (dB, 95th minus 10th percentile of the windows' RMS)."""
    w = int(0.4 * sr)
    n = x.shape[1] // w
    frames = x[:, :n * w].astype(np.float64).reshape(x.shape[0], n, w)
    rms = np.sqrt((frames ** 2).mean(axis=(0, 2)))
    db = 20 * np.log10(np.maximum(rms, 1e-9))
    return float(np.percentile(db, 95) - np.percentile(db, 10))


def rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(x.astype(np.float64) ** 2)))


@pytest.mark.parametrize("sr", RATES)
def test_conformed_takes_lose_their_dc_and_keep_the_band(sr: int) -> None:
    src = 32000  # AudioGen's rate: conform resamples as well
    t = np.arange(4 * src) / src
    for hz in (40.0, 440.0, 5000.0):
        tone = 0.1 * np.sin(2 * np.pi * hz * t)
        x = (tone - 0.2)[None].astype(np.float32)  # an offset twice the tone's amplitude
        y = conform(x, src, sr)
        settled = y[:, sr // 10:]  # 2nd order at 15 Hz: settled well within 100 ms
        assert abs(float(settled.mean())) < 1e-3, hz
        # the band is kept: 40 Hz within 0.15 dB, 440 Hz and 5 kHz within 0.02 dB
        want = rms_db(tone[src // 10:])
        assert rms_db(settled) == pytest.approx(want, abs=0.15 if hz < 100 else 0.02), hz
    # a take that starts on its offset does not thump: nothing larger than the tone (but the
    # resampler's ringing where the take stops dead, under 5 %)
    assert float(np.abs(y).max()) <= 0.1 * 1.05
    # a click keeps its sample: the filter is causal and adds no delay
    click = np.zeros((1, sr), np.float32)
    click[0, sr // 2] = 0.5
    out = conform(click, sr, sr)
    assert int(np.argmax(np.abs(out[0]))) == sr // 2
    assert float(out[0, sr // 2]) == pytest.approx(0.5, rel=0.01)
    assert float(np.abs(out[0, :sr // 2]).max()) == 0.0


def _peaky(sr: int, seconds: float = 8.0) -> np.ndarray:
    """Quiet noise with full-scale clicks four times a second: 31 dB peak-to-loudness."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.01, (2, int(seconds * sr)))
    x[:, :: sr // 4] = 1.0
    return x.astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_peaky_material_is_limited_a_few_db_and_the_shortfall_is_named(sr: int) -> None:
    x = _peaky(sr)
    elements = (ElementLevels("bed", -40.0, -27.0), ElementLevels("clicks", -34.0, 0.0))
    y, report = master(x, sr, -16.0, -1.0, elements=elements)
    # the limiter caught peaks, no more than allowed, and held the ceiling
    assert report.limiter_reduction_db <= MAX_LIMITING_DB + 0.05
    assert tp8(y) <= -1.0 + 0.1
    got = lufs(y, sr)
    # the peaks still stand above the loudness by all but the limiting allowed
    assert tp8(y) - got >= tp8(x) - lufs(x, sr) - MAX_LIMITING_DB - 0.2
    assert report.output_lufs == pytest.approx(got, abs=0.05)
    assert got < -16.0 - 0.5
    assert report.blocked_by == "clicks" and report.blocked_by_plr_db == pytest.approx(34.0)
    # the mix's own PLR, before the master, by the independent meters
    assert report.input_plr_db == pytest.approx(tp8(x) - lufs(x, sr), abs=0.3)
    [w] = report.warnings
    assert w.message.startswith(f"reached {got:.1f} LUFS, not -16.0: the ceiling of -1.0 dBTP "
                                f"limits {report.limiter_reduction_db:.1f} dB (max_limiting 6 "
                                f"dB): the mix's peaks stand {report.input_plr_db:.1f} dB above "
                                f"its loudness, and -16.0 LUFS needs at most 21.0; the highest "
                                f"peaks are clicks's (34.0 dB above its loudness)")
    assert w.new == pytest.approx(got, abs=0.01)
    # asked for, heavy limiting is still there and still holds the ceiling
    y, report = master(x, sr, -16.0, -1.0, max_limiting_db=40.0)
    assert lufs(y, sr) == pytest.approx(-16.0, abs=0.5) and report.warnings == ()
    assert tp8(y) <= -1.0 + 0.1 and report.limiter_reduction_db > 20


def _dungeon(tmp_path: Path, sr: int) -> Path:
    """scenes/dungeon.yaml's drone and drips from files with the tiny model's faults: the
    drone nearly pure offset (mean -0.033 against an RMS of 0.033), the drips peaky."""
    rng = np.random.default_rng(7)
    src = 32000
    n = 8 * src
    hum = np.convolve(rng.normal(0, 1, n), np.ones(64) / 64, "same")
    drone = -0.033 + 0.033 * hum / hum.std()
    wav(tmp_path / "drone.wav", drone.astype(np.float32), src)
    t = np.arange(src) / src
    drip = 0.9 * np.sin(2 * np.pi * 1200 * t) * np.exp(-t * 300)
    wav(tmp_path / "drip.wav", drip.astype(np.float32), src)
    scene = tmp_path / "dungeon.yaml"
    scene.write_text(f"""\
name: dungeon
duration: 30 s
sample_rate: {sr}
seed: 42
elements:
  drone:
    file: drone.wav
    volume: -10 dB
    stereo: decorrelate
    loop: {{crossfade: 3 s}}
    fade_in: 5 s
    fade_out: 8 s
    effects: [{{lowpass: {{cutoff: 2 kHz}}}}]
  drips:
    file: drip.wav
    volume: -14 dB
    scatter: {{interval: [1.5 s, 6 s], level_jitter: 6 dB, pan_jitter: 1.0}}
    effects: [{{reverb: {{room_size: 0.9, damping: 0.3, wet: 0.5, dry: 0.6}}}}]
master: {{loudness: -20 LUFS, ceiling: -1 dBTP}}
""")
    return scene


@pytest.mark.parametrize("sr", RATES)
def test_dungeon_is_not_crushed_and_says_what_stops_it(tmp_path: Path, sr: int) -> None:
    [res] = render(_dungeon(tmp_path, sr), out=tmp_path / "out", bit_depth=32)
    mix, _ = read_audio(res.mix)
    stems = {n: read_audio(p)[0] for n, p in res.stems.items()}
    pre = sum(stems.values())
    # no offset reaches the mix (the drone's was -0.033 before the DC blocker)
    assert abs(float(mix.mean())) < 1e-3 and abs(float(stems["drone"].mean())) < 1e-3
    m = json.loads(res.manifest_path.read_text())["mix"]
    assert m["limiter_reduction_db"] <= MAX_LIMITING_DB + 0.05
    assert m["max_limiting_db"] == MAX_LIMITING_DB
    assert tp8(mix) <= -1.0 + 0.1
    # the mix keeps its dynamics: its 400 ms levels spread as the sum's did
    assert spread_400ms(mix, sr) == pytest.approx(spread_400ms(pre, sr), abs=0.5)
    got = lufs(mix, sr)
    assert m["loudness_lufs"] == pytest.approx(got, abs=0.05)
    if got < -20.5:  # short of the target: said, with whose peaks stand in the way
        assert m["blocked_by"] == "drips"
        plr = tp8(stems["drips"]) - lufs(stems["drips"], sr)
        assert m["blocked_by_plr_db"] == pytest.approx(plr, abs=0.3)
        [w] = [w for w in res.manifest.warnings if w.stage == "master"]
        assert "the highest peaks are drips's" in w.message
    else:
        assert m["blocked_by"] is None
    assert m["input_plr_db"] == pytest.approx(tp8(pre) - lufs(pre, sr), abs=0.3)


def test_a_manifest_from_before_the_capped_limiter_still_reads(tmp_path: Path) -> None:
    [res] = render(_dungeon(tmp_path, 22050), out=tmp_path / "out")
    data = json.loads(res.manifest_path.read_text())
    for k in ("max_limiting_db", "input_plr_db", "blocked_by", "blocked_by_plr_db"):
        del data["mix"][k]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    got = read_manifest(old)
    assert got is not None and got.mix.blocked_by is None
    assert got.mix.loudness_lufs == data["mix"]["loudness_lufs"]
