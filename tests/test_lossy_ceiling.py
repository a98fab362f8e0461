"""Lossy mixes keep the ceiling (issue 23, item 5): an mp3 or ogg mix decodes, by libsndfile
(soundfile) and scipy's 8x resampling, under its true-peak ceiling, and the manifest records
the decoded figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
from scipy.signal import resample_poly

from soundscape.audio_io import output_problem
from soundscape.pipelines.render import render
from tests.conftest import wav

RATES = [22050, 44100, 48000, 96000]


def tp8(x: np.ndarray) -> float:
    up = resample_poly(x.astype(np.float64), 8, 1, axis=1)
    return 20 * math.log10(max(float(np.abs(up).max()), float(np.abs(x).max())))


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
@pytest.mark.parametrize("sr", RATES)
def test_a_lossy_mix_decodes_under_its_ceiling(tmp_path: Path, sr: int, fmt: str) -> None:
    if output_problem(fmt, sr, 2, None) is not None:
        pytest.skip(f"{fmt} is not written at {sr} Hz")
    rng = np.random.default_rng(2)
    # full-band, dense and loud: the codec's requantisation raises its peaks
    noise = np.clip(rng.normal(0, 0.5, 6 * sr), -1, 1).astype(np.float32)
    wav(tmp_path / "noise.wav", noise, sr)
    (tmp_path / "s.yaml").write_text(
        f"name: s\nduration: 6 s\nsample_rate: {sr}\n"
        "master: {loudness: -5 LUFS, ceiling: -1 dBTP, max_limiting: 20 dB}\n"
        "elements:\n  noise: {file: noise.wav, loop: {crossfade: 100 ms}}\n")
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o", fmt=fmt)
    decoded, got_sr = soundfile.read(res.mix, always_2d=True)
    assert got_sr == sr
    x = decoded.T
    peak = tp8(x)
    assert peak <= -1.0 + 0.05, peak
    m = json.loads(res.manifest_path.read_text())["mix"]
    assert m["true_peak_dbtp"] <= -1.0
    # the manifest's figures are the decoded file's
    assert m["true_peak_dbtp"] == pytest.approx(peak, abs=0.1)
    lufs = pyloudnorm.Meter(sr).integrated_loudness(x.T)
    assert m["loudness_lufs"] == pytest.approx(lufs, abs=0.1)
    assert m["lossy_trim_db"] is not None and m["lossy_trim_db"] <= 0.0
