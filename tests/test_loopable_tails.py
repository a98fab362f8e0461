"""A loopable mix folds whole tails and primes its master effects to steady state (issue 23,
item 2): played twice, nowhere does its level fall faster than its reverbs decay, and the wrap
steps no further than the mix does inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import read_audio
from soundscape.pipelines.render import render
from tests.conftest import wav

RATES = [22050, 44100, 48000, 96000]


def levels_db(x: np.ndarray, sr: int, window_s: float = 0.01) -> np.ndarray:
    """Level of consecutive 10 ms windows (dB), channels pooled."""
    n = int(window_s * sr)
    k = x.shape[1] // n
    power = (x[:, :k * n].astype(np.float64) ** 2).reshape(x.shape[0], k, n).mean(axis=(0, 2))
    return 10 * np.log10(power + 1e-20)


def largest_fall_db(x: np.ndarray, sr: int, within_db: float = 50.0) -> tuple[float, float]:
    """(the largest fall in level between consecutive 10 ms windows, where it is in s), from
    windows within ``within_db`` of the loudest (a reverb's last -70 dB may end as it likes)."""
    level = levels_db(x, sr)
    d = np.diff(level)
    d[level[:-1] < level.max() - within_db] = 0.0
    i = int(np.argmin(d))
    return float(-d[i]), (i + 1) * 0.01


SCENE = """name: tails
duration: 10 s
sample_rate: {sr}
master: {{loudness: off, ceiling: -1 dBTP, loopable: 1 s{fx}}}
elements:
  hit:
    file: hit.wav
    at: [8.8 s]
    effects: [{{reverb: {{room_size: 0.95, damping: 0.2, wet: 0.8, dry: 0.5}}}}]
"""


@pytest.mark.parametrize("master_reverb", [False, True])
@pytest.mark.parametrize("sr", RATES)
def test_a_loopable_mix_played_twice_falls_nowhere_faster_than_its_tails(
        tmp_path: Path, sr: int, master_reverb: bool) -> None:
    rng = np.random.default_rng(4)
    hit = np.zeros(sr // 2, np.float32)
    hit[: sr // 10] = rng.normal(0, 0.3, sr // 10) * np.linspace(1, 0, sr // 10)
    wav(tmp_path / "hit.wav", hit, sr)
    fx = (", effects: [{reverb: {room_size: 0.9, damping: 0.3, wet: 0.5, dry: 0.8}}]"
          if master_reverb else "")
    (tmp_path / "s.yaml").write_text(SCENE.format(sr=sr, fx=fx))
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o", bit_depth=32)
    y, _ = read_audio(res.mix)
    assert y.shape == (2, 10 * sr)
    twice = np.concatenate([y, y], axis=1)
    # the hit's reverb rings 8.6 s: past the end and on through the loop's start; no 10 ms
    # window falls further below the one before than the reverb's own flutter does (under
    # 7 dB; the tail cut dead where the folded stretch ended fell 150 dB at once)
    fall, at = largest_fall_db(twice, sr)
    assert fall <= 10.0, (fall, at)
    # no step at the wrap larger than inside
    inside = float(np.abs(np.diff(y, axis=1)).max())
    assert float(np.abs(y[:, 0] - y[:, -1]).max()) <= inside


PRIMED = """name: primed
duration: 8 s
sample_rate: {sr}
master:
  loudness: off
  loopable: 1 s
  effects: [{{delay: {{time: 700 ms, feedback: 0.85, mix: 0.7}}}}]
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 300 ms}}}}
"""


@pytest.mark.parametrize("sr", RATES)
def test_a_long_master_echo_is_primed_to_its_steady_state(tmp_path: Path, sr: int) -> None:
    rng = np.random.default_rng(9)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.05, 3 * sr), sr)
    (tmp_path / "s.yaml").write_text(PRIMED.format(sr=sr))
    [res] = render(tmp_path / "s.yaml", out=tmp_path / "o", bit_depth=32)
    y, _ = read_audio(res.mix)
    # the echoes (a 40 s tail) have built up to their steady state at the loop's start as at
    # its end, not only what 2 s of priming gives (2.7 dB short): the level of 100 ms
    # windows holds within 1 dB (the noise's own flutter) everywhere, across the wrap too,
    # and the loop's first half second is within 0.3 dB of its last
    twice = np.concatenate([y, y], axis=1)
    level = levels_db(twice, sr, 0.1)
    body = float(np.median(level))
    assert np.abs(level - body).max() <= 1.0, (level - body).round(2)
    first, last = levels_db(y[:, : sr // 2], sr, 0.5), levels_db(y[:, -sr // 2:], sr, 0.5)
    assert abs(float(first[0] - last[0])) <= 0.3
