"""Review of the day's changes: the pre-master sum kept between renders (``outputs.sumcache``)
on inputs its own tests did not try, and WAV files with room for tags read by other readers."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from soundscape.audio_io import read_audio, write_audio
from soundscape.outputs import sumcache
from soundscape.outputs.tags import Tags, tag_file
from soundscape.pipelines.render import render
from soundscape.riff import set_chunks, wav_chunks
from tests.test_iterate_cache import SCENE, TOLERANCE, interrupted_edit, mix_of, write_scene


def _cached_sum(out: Path, channels: int) -> np.ndarray:
    data = np.fromfile(out / "it" / sumcache.CACHE_DIR / sumcache.SUM_FILE, np.float32)
    return data.reshape(channels, -1)  # a row per channel


def _silence_in_place(path: Path, start_s: float, seconds: float, sr: int,
                      frame_bytes: int) -> None:
    """Overwrite ``seconds`` of a WAV file's samples with zeros, by hand: the same size, the
    same key in the manifest, other samples (as an editor saving over the stem would)."""
    data = bytearray(path.read_bytes())
    at = next(c.offset for c in wav_chunks(path) or [] if c.id == b"data")
    a = at + int(start_s * sr) * frame_bytes
    data[a:a + int(seconds * sr) * frame_bytes] = bytes(int(seconds * sr) * frame_bytes)
    path.write_bytes(bytes(data))


def _edit_after_replacing(tmp_path: Path, stem: str, at_s: float) -> tuple[Path, Path, Any]:
    """Render, silence a second of ``stem``'s file by hand from ``at_s``, edit the bed's
    volume and render again: the scene, the output folder and the edit's result."""
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    _silence_in_place(out / "it" / "stems" / f"{stem}.wav", at_s, 1.0, 48000, 6)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    return scene, out, res


def test_a_changed_stem_replaced_on_disk_is_not_subtracted_from_the_sum(tmp_path: Path) -> None:
    """The stem an edit re-renders was replaced on disk by a file of the same size (its key and
    size in the manifest still match): the cached sum must not have that file subtracted from
    it (it holds the stem the render wrote, not the file now on disk)."""
    scene, out, res = _edit_after_replacing(tmp_path, "bed", 1.5)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    assert float(np.abs(_cached_sum(out, 2) - stems).max()) <= 3 * TOLERANCE[24]
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def test_a_kept_stem_replaced_on_disk_still_sums_to_the_mix(tmp_path: Path) -> None:
    """A kept stem replaced on disk by a file of the same size is read into the mix by a render
    without the cached sum (the stems on disk sum to the mix); the cached sum must not hide it."""
    _, out, res = _edit_after_replacing(tmp_path, "tone", 1.2)
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    assert float(np.abs(_cached_sum(out, 2) - stems).max()) <= 3 * TOLERANCE[24]


LOUD = SCENE.replace("master: {{loudness: -20 LUFS}}",
                     "master: {{loudness: -9 LUFS, ceiling: -1, max_limiting: 12 dB}}")


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_edit_the_master_limits_equals_a_fresh_render(tmp_path: Path, on_disk: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The sum cache under a master that limits (the limiter's path, not the scaled one), with
    the sum in memory and worked in place in ``.cache/sum.f32`` (a long scene's)."""
    if on_disk:
        import soundscape.dsp.bus as bus_module

        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1 << 16)
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    scene.write_text(LOUD.format(sr=48000, channels=2, bed="-6 dB"))
    render(scene, out=out, jobs=1)
    scene.write_text(LOUD.format(sr=48000, channels=2, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert res.manifest.mix.limiter_reduction_db is not None
    assert res.manifest.mix.limiter_reduction_db > 1.0  # the limiter did act
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= 1e-5
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    assert res.mix_true_peak_dbtp <= -1.0 + 1e-6


# --- WAV files with room for tags, read by other readers ----------------------------------------


TAGS = Tags("title", "a description", "scene", None, "rain", "rain", 7, "model", "k" * 64,
            "2026-01-02T03:04:05", -20.5, -1.25)


@pytest.mark.parametrize("bits", [16, 24, 32])
@pytest.mark.parametrize("sr,channels", [(22050, 1), (44100, 2), (96000, 2)])
def test_room_and_in_place_tags_read_exactly_everywhere(tmp_path: Path, bits: int, sr: int,
                                                        channels: int) -> None:
    """Untagged, tagged, tagged again, and then with chunks grown past the room (rewritten by
    copying) and tagged once more: every reader gets the frames, rate and samples written."""
    from pedalboard.io import AudioFile
    from wavinfo import WavInfoReader

    n = 12345
    audio = np.random.default_rng(bits).uniform(-0.9, 0.9, (channels, n)).astype(np.float32)
    path = write_audio(tmp_path / "a.wav", audio, sr, bits)
    expected = read_audio(path)[0]  # as quantised by the encoder
    ref_sf = sf.read(str(path), dtype="float32", always_2d=True)[0]
    plain = tmp_path / "plain.wav"  # the encoder's own file, no room
    with AudioFile(str(plain), "w", sr, channels, bit_depth=bits) as f:
        f.write(audio)
    try:
        with wave.open(str(plain)) as w:
            plain_wave = (w.getparams(), w.readframes(n + 1))
    except wave.Error:  # float, or WAVE_FORMAT_EXTENSIBLE before Python 3.12
        plain_wave = None

    def check(stage: str) -> None:
        got, rate = sf.read(str(path), dtype="float32", always_2d=True)
        assert rate == sr and got.shape == (n, channels), stage
        np.testing.assert_array_equal(got, ref_sf, err_msg=stage)
        with AudioFile(str(path)) as f:
            assert (f.samplerate, f.num_channels, f.frames) == (sr, channels, n), stage
            np.testing.assert_array_equal(f.read(n), expected, err_msg=stage)
        if plain_wave is not None:  # what the standard library reads of the encoder's file
            with wave.open(str(path)) as w:
                got_wave = (w.getparams(), w.readframes(n + 1))
            assert got_wave == plain_wave, stage
        info = WavInfoReader(str(path))
        assert info.fmt.sample_rate == sr and info.fmt.channel_count == channels, stage
        assert info.data.frame_count == n, stage
        sizes = sum(8 + c.size + (c.size & 1) for c in wav_chunks(path) or [])
        assert sizes + 12 == path.stat().st_size, stage  # the chunks cover the file exactly

    check("untagged")
    assert tag_file(path, TAGS)
    check("tagged")
    assert tag_file(path, TAGS)
    check("tagged twice")
    assert WavInfoReader(str(path)).bext.description == TAGS.description
    # a chunk before the audio larger than the room: the file is rewritten by copying
    assert set_chunks(path, {b"xbig": b"x" * 5001}, {})
    check("grown past the room")
    assert tag_file(path, TAGS)
    check("tagged after growing")
    info = WavInfoReader(str(path))
    assert info.bext.description == TAGS.description
    assert info.bext.originator_ref == TAGS.key[:32]


@pytest.mark.parametrize("sr,channels", [(22050, 1), (44100, 2), (96000, 2)])
def test_an_edited_mix_reports_what_independent_meters_read(tmp_path: Path, sr: int,
                                                           channels: int) -> None:
    """An edit's master (the updated sum, measured once, moved by the gain: the scaled pass)
    reports the loudness and true peak that pyloudnorm and an 8x resample_poly read."""
    import pyloudnorm
    from scipy.signal import resample_poly

    scene = write_scene(tmp_path, sr, channels)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=sr, channels=channels, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    assert res.manifest.mix.limiter_reduction_db == 0.0  # the scaled pass
    x = mix_of(res).astype(np.float64)
    theirs = pyloudnorm.Meter(sr).integrated_loudness(x.T)
    assert res.mix_lufs == pytest.approx(theirs, abs=0.05)
    assert res.mix_lufs == pytest.approx(-20.0, abs=0.1)
    tp = 20 * np.log10(np.abs(resample_poly(x, 8, 1, axis=1)).max())
    assert res.mix_true_peak_dbtp == pytest.approx(tp, abs=0.2)


# pedalboard's PitchShift (Rubber Band) turns a difference of 1.8e-7 in the sum (an edit's
# rounding) into an uncorrelated output (relative RMS difference 1.27, 1.3 peak; the same input
# gives the same output): with a master pitch_shift no incremental render, with or without the
# cached sum, equals a fresh one
CHAOTIC = pytest.mark.xfail(strict=True, reason="master pitch_shift amplifies rounding")


@pytest.mark.parametrize("effect", ["{lowpass: {cutoff: 3 kHz}}",
                                    pytest.param("{pitch_shift: {semitones: 2}}",
                                                 marks=CHAOTIC)])
def test_an_edit_under_master_effects_equals_a_fresh_render(tmp_path: Path, effect: str) -> None:
    """Master effects run into a bus of their own when the sum is kept: the kept sum stays the
    stems' sum, and the next edit's mix is a fresh render's."""
    fx = SCENE.replace("master: {{loudness: -20 LUFS}}",
                       "master: {{loudness: -20 LUFS, effects: [" + effect.replace("{", "{{")
                       .replace("}", "}}") + "]}}")
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    scene.write_text(fx.format(sr=48000, channels=2, bed="-6 dB"))
    render(scene, out=out, jobs=1)
    scene.write_text(fx.format(sr=48000, channels=2, bed="-12 dB"))
    [res] = render(scene, out=out, jobs=1)
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    assert float(np.abs(_cached_sum(out, 2) - stems).max()) <= 3 * TOLERANCE[24]
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= 1e-5


# The encoder (pedalboard/JUCE) floors to integer PCM (1.7 -> 1, -1.3 -> -2 steps), so each
# subtracted file leaves float - floor(float), in [0, 1) step, always >= 0, in the sum: the
# error grows a step per edit (16 bits: 3.05e-5, 6.1e-5, ... 3.05e-4 after 16 edits; 24 bits:
# 2.4e-7 ... 1.07e-6), not as a random walk of half steps. ``sumcache.max_edits`` rebuilds the
# sum before that passes 1e-4 (after 3 edits at 16 bits); the README gives these figures.
DRIFT = {16: 1e-4, 24: 2e-6}


@pytest.mark.parametrize("kind", ["effect", "volume"])
@pytest.mark.parametrize("bit_depth", [16, 24])
def test_edits_in_a_row_stay_within_the_documented_tolerance(tmp_path: Path, bit_depth: int,
                                                             kind: str) -> None:
    """Every edit but a volume's leaves its subtracted file's rounding in the sum (a volume
    edit takes the earlier stem out exactly), and every edit counts (``max_edits`` in a row
    before a rebuild): each edit, the last before the rebuild and the one after it included,
    stays within the README's figure of a fresh render (2e-6 at 24 bits, 1e-4 at 16)."""
    from soundscape.outputs.incremental import Output

    scene = write_scene(tmp_path, 44100, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1, bit_depth=bit_depth)
    allowed = sumcache.max_edits(Output(44100, 2, 1, "wav", bit_depth))
    assert allowed == {16: 3, 24: 16}[bit_depth]
    worst = []
    for k in range(allowed + 1):
        bed = f"{-6.5 - 0.37 * k:.2f} dB" if kind == "volume" else \
            f"-6 dB, effects: [{{lowpass: {{cutoff: {3000 + 170 * k} Hz}}}}]"
        scene.write_text(SCENE.format(sr=44100, channels=2, bed=bed))
        [res] = render(scene, out=out, jobs=1, bit_depth=bit_depth)
        assert json_edits(out) == (k + 1 if k < allowed else 0)  # then rebuilt from the stems
        [fresh] = render(scene, out=tmp_path / f"fresh{k}", jobs=1, bit_depth=bit_depth)
        worst.append(float(np.abs(mix_of(res) - mix_of(fresh)).max()))
    assert max(worst) <= DRIFT[bit_depth], " ".join(f"{w:.2e}" for w in worst)


def json_edits(out: Path) -> int:
    import json

    edits: int = json.loads((out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE)
                            .read_text())["edits"]
    return edits


def _drop_drip(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "drip:" not in line) + "\n"


def _add_tone2(text: str) -> str:
    return text.replace("master:", "  tone2: {file: tone.wav, at: 2 s, volume: -9 dB}\nmaster:")


@pytest.mark.parametrize("change", [
    _drop_drip, _add_tone2,
    lambda t: t.replace("duration: 4 s", "duration: 3 s"),
    lambda t: t.replace("sample_rate: 48000", "sample_rate: 44100"),
    lambda t: t.replace("channels: 2", "channels: 1"),
], ids=["element removed", "element added", "duration", "sample rate", "channels"])
def test_a_scene_change_with_a_kept_sum_equals_a_fresh_render(tmp_path: Path,
                                                             change: object) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(change(SCENE.format(sr=48000, channels=2, bed="-12 dB")))  # type: ignore
    [res] = render(scene, out=out, jobs=1)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    a, b = mix_of(res), mix_of(fresh)
    assert a.shape == b.shape
    assert float(np.abs(a - b).max()) <= TOLERANCE[24]
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    assert float(np.abs(_cached_sum(out, a.shape[0]) - stems).max()) <= 3 * TOLERANCE[24]


def test_an_only_render_then_an_edit_equals_a_fresh_render(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-9 dB"))
    render(scene, out=out, jobs=1, only=["bed"])
    assert not (out / "it" / sumcache.CACHE_DIR / sumcache.INDEX_FILE).exists()
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    render(scene, out=out, jobs=1)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-14 dB"))
    [res] = render(scene, out=out, jobs=1)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]


def test_the_budget_counts_the_master_effects_own_bus(tmp_path: Path) -> None:
    """A render that keeps its sum runs the master effects into a bus of their own (``master_bus``
    with ``keep_sum``): with the sum and the limiter's staged output, three buses; a long
    scene's are files on the output disk, so the disk estimate holds all three."""
    from soundscape.arrange import arrange
    from soundscape.dsp.effects import EffectSpec
    from soundscape.mixer import budget
    from soundscape.scene import load_scene

    scene = write_scene(tmp_path, 48000, 2)
    arr = arrange(load_scene(scene), {"bed": 2.0, "drip": 0.25, "tone": 1.0})
    frames = 3 * 3600 * 48000  # three hours: the buses are files
    fx = (EffectSpec("lowpass", (("cutoff", 2000.0),)),)
    plain = budget.estimate(arr, frames, 2, "wav", 24, 3, 1, ())
    with_fx = budget.estimate(arr, frames, 2, "wav", 24, 3, 1, fx)
    assert with_fx.disk - plain.disk >= 2 * frames * 4


def test_a_failed_edit_of_a_sum_worked_in_place_is_rebuilt(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A long scene's sum is the cache file itself, worked in place: an edit that fails after
    the old stem was subtracted leaves it half-updated; the next render must not trust it."""
    import soundscape.dsp.bus as bus_module

    monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1 << 16)
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    interrupted_edit(scene, out, monkeypatch)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-14 dB"))
    [res] = render(scene, out=out, jobs=1)
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(mix_of(res) - mix_of(fresh)).max()) <= TOLERANCE[24]
    stems = sum(read_audio(p)[0] for p in res.stems.values())
    assert float(np.abs(_cached_sum(out, 2) - stems).max()) <= 3 * TOLERANCE[24]
