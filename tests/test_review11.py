"""Review of the one-element volume edit (issue 23 item 8): the sum an edit updates without
reading the earlier stem back, the true peak's re-laid interpolation, the joined loudness of
channel halves and the stem keys read without ``asdict``; each against a fresh render or an
independent measurement."""

from __future__ import annotations

import collections
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import soundscape.dsp.bus as bus_module
from soundscape.audio_io import read_audio
from soundscape.dsp.meter import REPORTED_TRUE_PEAK, TRUE_PEAK, Interpolator, measure
from soundscape.outputs import sumcache
from soundscape.outputs.incremental import _plain
from soundscape.pipelines.render import render
from tests.test_iterate_cache import SCENE as ITERATE_SCENE
from tests.test_iterate_cache import write_takes

# test_iterate_cache's scene, with the drip's volume, the bed's effects and the tone's cutoff
# to edit
SCENE = (ITERATE_SCENE.replace("volume: {bed}}}", "volume: {bed}{bed_fx}}}")
         .replace("drip.wav, scatter", "drip.wav, volume: {drip}, scatter")
         .replace("cutoff: 2 kHz", "cutoff: {cutoff}"))


def write(path: Path, sr: int = 48000, channels: int = 2, bed: str = "-6 dB",
          drip: str = "0 dB", cutoff: str = "2 kHz", bed_fx: str = "") -> None:
    path.write_text(SCENE.format(sr=sr, channels=channels, bed=bed, drip=drip, cutoff=cutoff,
                                 bed_fx=bed_fx))


def cached_sum(out: Path, channels: int) -> np.ndarray:
    raw = np.fromfile(out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE, np.float32)
    return raw.reshape(channels, -1)


def edits(out: Path) -> int:
    data: dict[str, Any] = json.loads(
        (out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE).read_text())
    return int(data["edits"])


# --- the sum of a volume edit ---------------------------------------------------------------

@pytest.mark.parametrize("sr,channels", [(44100, 2), (22050, 1)])
def test_a_volume_edit_of_a_stem_the_sum_read_from_its_file_leaves_no_rounding(
        tmp_path: Path, sr: int, channels: int) -> None:
    """A sum rebuilt from the files of the stems it kept holds each one as its file reads
    back (16 bits: up to a step off the stem rendered). A later edit of one of those stems'
    volume must take out what the sum holds, the file, not the stem at its earlier volume
    as rendered: else the file's rounding stays in the sum (seen: 5.4e-5 at 16 bits, where
    the edit's sum is otherwise a fresh render's to 1e-7)."""
    write_takes(tmp_path)
    scene, out = tmp_path / "it.yaml", tmp_path / "o"
    write(scene, sr, channels)
    render(scene, out=out, jobs=1, bit_depth=16)
    # two stems change: the sum is rebuilt, the drip's stem read back from its 16-bit file
    write(scene, sr, channels, bed="-12 dB", cutoff="3 kHz")
    render(scene, out=out, jobs=1, bit_depth=16)
    assert edits(out) == 0
    write(scene, sr, channels, bed="-12 dB", cutoff="3 kHz", drip="-3 dB")
    [res] = render(scene, out=out, jobs=1, bit_depth=16)
    assert edits(out) == 1  # an edit of the cached sum
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=16)
    gap = float(np.abs(cached_sum(out, channels) - cached_sum(tmp_path / "fresh", channels))
                .max())
    assert gap <= 1e-6
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    # and the next volume edit of the same stem, now in the sum as rendered, stays exact
    write(scene, sr, channels, bed="-12 dB", cutoff="3 kHz", drip="-9 dB")
    render(scene, out=out, jobs=1, bit_depth=16)
    assert edits(out) == 2
    render(scene, out=tmp_path / "fresh2", jobs=1, bit_depth=16)
    gap = float(np.abs(cached_sum(out, channels) - cached_sum(tmp_path / "fresh2", channels))
                .max())
    assert gap <= 1e-6



@pytest.mark.parametrize("damage", [-20.0, True, 1e308, -1e308, "-6"])
def test_a_damaged_volume_in_the_index_is_not_trusted(tmp_path: Path, damage: Any) -> None:
    """The index's volume of a stem (``levels``) says at what level the sum holds it: a volume
    edit takes it out of the sum at that level, and scales its figures from it. One that is
    not the level of the stem's key in the sum (a hand-edited or damaged index: another
    number, a boolean) is not trusted: the edit's sum, mix and the stem's figures are a fresh
    render's (seen: a sum 0.12 off and figures 14 dB off with -20 dB written for -6 dB)."""
    write_takes(tmp_path)
    scene, out = tmp_path / "it.yaml", tmp_path / "o"
    write(scene)
    render(scene, out=out, jobs=1, bit_depth=24)
    path = out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE
    data = json.loads(path.read_text())
    data["levels"]["bed"]["volume_db"] = damage
    path.write_text(json.dumps(data))
    write(scene, bed="-9 dB")
    [res] = render(scene, out=out, jobs=1, bit_depth=24)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1, bit_depth=24)
    assert float(np.abs(cached_sum(out, 2) - cached_sum(tmp_path / "fresh", 2)).max()) <= 1e-6
    assert float(np.abs(read_audio(res.mix)[0] - read_audio(fresh.mix)[0]).max()) <= 5e-7
    ours = json.loads((out / "it" / "manifest.json").read_text())["elements"]
    theirs = json.loads((tmp_path / "fresh/it/manifest.json").read_text())["elements"]
    for a, b in zip(ours, theirs, strict=True):
        assert a["element"] == b["element"]
        assert a["loudness_lufs"] == pytest.approx(b["loudness_lufs"], abs=0.01)
        assert a["true_peak_dbtp"] == pytest.approx(b["true_peak_dbtp"], abs=0.01)

@pytest.mark.parametrize("on_disk", [False, True], ids=["in_memory", "on_disk"])
@pytest.mark.parametrize("channels", [1, 2])
def test_edits_in_a_row_mute_back_effect_and_volume_read_as_a_fresh_render(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_disk: bool, channels: int) -> None:
    """Volume edits around the others: an element muted (-inf dB: not a volume change that
    scales), brought back, its effect changed (its earlier file taken out), then its volume
    and another's changed in turn. After each, the cached sum is a fresh render's (24 bits:
    each subtracted file leaves up to a step, 1.2e-7), and so are its mix's loudness and true
    peak; on disk, the sum is measured by the other processes."""
    if on_disk:
        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    write_takes(tmp_path)
    scene, out = tmp_path / "it.yaml", tmp_path / "o"
    hp = ", effects: [{highpass: {cutoff: 300 Hz}}]"
    steps: list[dict[str, str]] = [
        {}, {"bed": "-inf dB"}, {"bed": "-4 dB"}, {"bed": "-4 dB", "bed_fx": hp},
        {"bed": "-15 dB", "bed_fx": hp}, {"bed": "-15 dB", "bed_fx": hp, "drip": "+4 dB"}]
    for k, step in enumerate(steps):
        write(scene, 44100, channels, **step)
        [res] = render(scene, out=out, jobs=1, bit_depth=24)
        if k:
            assert edits(out) == k  # each an edit of the cached sum
            [fresh] = render(scene, out=tmp_path / f"fresh{k}", jobs=1, bit_depth=24)
            gap = np.abs(cached_sum(out, channels) - cached_sum(tmp_path / f"fresh{k}",
                                                                    channels))
            assert float(gap.max()) <= 1e-6, step
            assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
            assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)
            mix, fresh_mix = read_audio(res.mix)[0], read_audio(fresh.mix)[0]
            assert float(np.abs(mix - fresh_mix).max()) <= 5e-7


# --- the true peak ---------------------------------------------------------------------------

def every_gap(ip: Interpolator, ext: np.ndarray) -> float:
    """The largest |value| of every gap of ``ext`` (float32, as the meter sums), read by
    interpolating them all."""
    n = ext.shape[1] - ip.taps + 1
    return float(ip._interpolate(ext, np.arange(n)).max()) if n > 0 else 0.0


def odd_material(kind: str, channels: int, n: int, sr: int = 44100) -> np.ndarray:
    rng = np.random.default_rng(n + channels)
    t = np.arange(n) / sr
    x = np.zeros((channels, n))
    if kind == "noise":
        x = rng.normal(0, 0.3, (channels, n))
    elif kind == "one_silent":  # the other channels silent, the last a near-Nyquist tone
        x[-1] = 0.7 * np.sin(2 * np.pi * 0.497 * sr * t + 0.3)
    else:  # clicks in silence, in one channel or another
        x[rng.integers(0, channels, 9), rng.integers(0, n, 9)] = rng.uniform(-1, 1, 9)
    return x.astype(np.float32)


@pytest.mark.parametrize("ip", [TRUE_PEAK, REPORTED_TRUE_PEAK], ids=["8x", "4x"])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 11, 26, 63, 65, 4097, 9001])
@pytest.mark.parametrize("kind", ["noise", "one_silent", "clicks"])
def test_the_pruned_true_peak_is_every_gaps_largest_for_any_floor(
        ip: Interpolator, channels: int, n: int, kind: str) -> None:
    """``max_gap_peak`` against every gap interpolated: the same value to the bit wherever
    the answer beats the floor (floors just under it, at it, a float32 step over it), and no
    more than the floor otherwise, for inputs shorter than the taps, lengths that are not
    whole sub-blocks, one or several channels, and chunks smaller and larger than the rows."""
    x = odd_material(kind, channels, n)
    ext = np.pad(x, ((0, 0), (ip.left, ip.right)))
    answer = every_gap(ip, ext)
    under = float(np.nextafter(np.float32(answer), np.float32(0)))
    over = float(np.nextafter(np.float32(answer), np.float32(2)))
    for floor in (0.0, 0.5 * answer, under, answer, over):
        for chunk in (1, 16, 256):
            got = ip.max_gap_peak(ext, floor, chunk)
            if answer > floor:
                assert got == answer, (floor, chunk)
            else:
                assert got <= floor, (floor, chunk)
    if answer > 0:
        assert float(ip.gap_peaks(ext, 0.0).max()) == answer


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_a_known_floor_reads_the_same_true_peak_as_scipys_8x(sr: int) -> None:
    """The meter's true peak of a stereo signal whose channels differ (the left a quarter-rate
    tone whose samples fall 3 dB under its peaks, the right a quieter tone near Nyquist, both
    faded in and out, of a length that is no whole number of sub-blocks) is the same whether
    it starts from no floor or from a level just under the answer (``peak_floor``, as the
    edit's measuring process starts from), and within 0.2 dB of scipy's 8x polyphase
    resampling."""
    scipy_signal = pytest.importorskip("scipy.signal")
    n = 3 * sr + 37
    t = np.arange(n) / sr
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.5)
    x = np.stack([0.5 * fade * np.sin(2 * np.pi * sr / 4 * t + math.pi / 4),
                  0.3 * fade * np.sin(2 * np.pi * 0.47 * sr * t + 0.7)]).astype(np.float32)
    free = measure(x, sr, loudness=False)
    assert free.true_peak > free.sample_peak * 1.3  # read between the samples
    for floor in (free.sample_peak, free.true_peak * (1 - 1e-6)):
        assert measure(x, sr, loudness=False, peak_floor=floor).true_peak == free.true_peak
    up = scipy_signal.resample_poly(x.astype(np.float64), 8, 1, axis=1)
    reference_db = 20 * math.log10(float(np.abs(up).max()))
    assert free.true_peak_db == pytest.approx(reference_db, abs=0.2)


# --- the stem keys ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Leaf:
    level_db: float
    where: Path | None = None


@dataclass(frozen=True)
class _Node:
    name: str
    leaves: tuple[_Leaf, ...] = ()
    pairs: tuple[tuple[str, float], ...] = ()
    table: dict[str, Any] = field(default_factory=dict)
    nothing: None = None


def test_plain_writes_the_json_that_asdict_does() -> None:
    """The stem key's JSON is the same text from ``_plain`` as from ``dataclasses.asdict``
    (so earlier renders' keys stay current), for nested dataclasses in tuples, lists and
    dicts, pairs, None, Paths (written by ``str``), infinities, named tuples and an
    OrderedDict."""
    point = collections.namedtuple("point", "x y")
    leaf = _Leaf(-math.inf, Path("/tmp/ir.wav"))
    node = _Node("a", (leaf, _Leaf(3.5)), (("cutoff", 2000.0), ("q", 0.707)),
                 {"inner": [_Leaf(math.inf), {"deep": (point(1, _Leaf(0.0)),)}],
                  "ordered": collections.OrderedDict(k=[1, 2]), "none": None})
    outer = _Node("b", table={"node": node, "list": [node, (node,)]})
    for obj in (leaf, node, outer):
        ours = json.dumps(_plain(obj), sort_keys=True, default=str)
        theirs = json.dumps(asdict(obj), sort_keys=True, default=str)
        assert ours == theirs
    assert "Infinity" in json.dumps(_plain(outer), sort_keys=True, default=str)
