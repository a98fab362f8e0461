"""Incremental renders: only what changed is redone, and the result equals a full render."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import read_audio
from soundscape.pipelines.render import render
from tests.conftest import mtimes, wav

SUM_FILES = ("inc/.cache/sum.f32", "inc/.cache/sum.json")  # outputs.sumcache

SCENE = """\
name: inc
duration: 6 s
elements:
  bed: {{file: bed.wav, loop: {{crossfade: 300 ms}}, volume: -6 dB, stereo: decorrelate}}
  drip: {{file: drip.wav, scatter: {{interval: [0.5 s, 1.5 s], pan_jitter: 0.5}}}}
  hum:
    {{file: bed.wav, loop: true, volume: {hum_volume}, effects: [{{lowpass: {{cutoff: 300 Hz}}}}]}}
  room: {{file: drip.wav, at: 2 s, effects: [{{convolution: {{ir: ir.wav}}}}]}}
master: {{loudness: {loudness}}}
"""



@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    wav(tmp_path / "bed.wav", rng.normal(0, 0.1, 22050 * 2), 22050)
    wav(tmp_path / "drip.wav", rng.normal(0, 0.3, 4000) * np.hanning(4000), 16000)
    wav(tmp_path / "ir.wav", rng.normal(0, 0.1, 2400) * np.exp(-np.arange(2400) / 400), 48000)
    path = tmp_path / "inc.yaml"
    path.write_text(SCENE.format(hum_volume="-12 dB", loudness="-20 LUFS"))
    return path


def edit(path: Path, **kw: str) -> None:
    path.write_text(SCENE.format(**{"hum_volume": "-12 dB", "loudness": "-20 LUFS", **kw}))


def rendered(res: object) -> dict[str, bool]:
    return {e.element: e.rendered for e in res.elements}  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt,bit_depth", [("wav", 32), ("wav", 24), ("flac", None),
                                           ("ogg", None)])
def test_one_volume_edit_rewrites_that_stem_the_mix_and_the_manifest(
        scene: Path, tmp_path: Path, fmt: str, bit_depth: int | None) -> None:
    out = tmp_path / "o"
    [first] = render(scene, out=out, fmt=fmt, bit_depth=bit_depth, jobs=1)
    assert not first.up_to_date and set(rendered(first).values()) == {True}
    before = mtimes(out)
    [again] = render(scene, out=out, fmt=fmt, bit_depth=bit_depth, jobs=1)
    assert again.up_to_date and mtimes(out) == before  # nothing written, nothing touched
    edit(scene, hum_volume="-3 dB")
    [res] = render(scene, out=out, fmt=fmt, bit_depth=bit_depth, jobs=1)
    after = mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    # and the audition page, which draws the manifest, and the pre-master sum kept for the
    # next edit (lossless renders only: a lossy stem cannot be taken back out of it)
    assert changed == {f"inc/stems/hum.{fmt}", f"inc/mix.{fmt}", "inc/manifest.json",
                       "inc/index.html", *(SUM_FILES if fmt != "ogg" else ())}
    assert rendered(res) == {"bed": False, "drip": False, "hum": True, "room": False}
    m = json.loads(res.manifest_path.read_text())
    assert [e["rendered"] for e in m["elements"]] == [False, False, True, False]
    # the same as rendering everything again
    [full] = render(scene, out=tmp_path / "full", fmt=fmt, bit_depth=bit_depth, jobs=1)
    a, _ = read_audio(res.mix)
    b, _ = read_audio(full.mix)
    tol = 1e-6 if bit_depth == 32 else 1e-4 if fmt != "ogg" else 0.0
    if fmt == "ogg":  # lossy files: the kept stems were rendered again, only not rewritten
        np.testing.assert_allclose(a, b, atol=2e-3)
    else:
        np.testing.assert_allclose(a, b, atol=tol)
    hum_new, _ = read_audio(res.stems["hum"])
    hum_old = read_audio(full.stems["hum"])[0]
    np.testing.assert_allclose(hum_new, hum_old, atol=1e-6 if fmt != "ogg" else 1e-2)


def test_master_change_keeps_every_stem(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    before = mtimes(out)
    edit(scene, loudness="-14 LUFS")
    [res] = render(scene, out=out, jobs=1)
    after = mtimes(out)
    assert {k for k in after if after[k] != before[k]} == {"inc/mix.wav", "inc/manifest.json",
                                                           "inc/index.html", *SUM_FILES}
    assert set(rendered(res).values()) == {False}
    assert res.mix_lufs == pytest.approx(-14, abs=0.5)


def test_removed_element_loses_its_stem_and_force_renders_all(scene: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    assert (out / "inc/stems/room.wav").is_file()
    scene.write_text(scene.read_text().replace(
        "  room: {file: drip.wav, at: 2 s, effects: [{convolution: {ir: ir.wav}}]}\n", ""))
    [res] = render(scene, out=out, jobs=1)
    assert not (out / "inc/stems/room.wav").exists()
    assert sorted(p.name for p in (out / "inc/stems").iterdir()) == \
        ["bed.wav", "drip.wav", "hum.wav"]
    assert "room" not in res.stems and set(rendered(res).values()) == {False}
    before = mtimes(out)
    [res] = render(scene, out=out, jobs=1, force=True)
    after = mtimes(out)
    assert all(after[k] != before[k] for k in before)
    assert set(rendered(res).values()) == {True}


def test_damaged_stem_or_changed_impulse_response_is_rendered_again(scene: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    stem = out / "inc/stems/drip.wav"
    stem.write_bytes(stem.read_bytes()[:1000])  # truncated by hand
    [res] = render(scene, out=out, jobs=1)
    assert rendered(res) == {"bed": False, "drip": True, "hum": False, "room": False}
    audio, sr = read_audio(stem)
    assert audio.shape == (2, 6 * sr)
    rng = np.random.default_rng(9)  # same path, new content
    wav(tmp_path / "ir.wav", rng.normal(0, 0.1, 1200) * np.exp(-np.arange(1200) / 200), 48000)
    [res] = render(scene, out=out, jobs=1)
    assert rendered(res) == {"bed": False, "drip": False, "hum": False, "room": True}
    rng = np.random.default_rng(10)  # a recording replaced under the same name
    wav(tmp_path / "drip.wav", rng.normal(0, 0.3, 4000) * np.hanning(4000), 16000)
    [res] = render(scene, out=out, jobs=1)
    assert rendered(res) == {"bed": False, "drip": True, "hum": False, "room": True}


def test_format_change_replaces_the_old_stems(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    [res] = render(scene, out=out, fmt="flac", jobs=1)
    assert set(rendered(res).values()) == {True}
    takes = out / "inc/.cache/takes"  # each element's conformed takes, kept for the next
    assert sorted(p.name for p in (out / "inc").rglob("*.*")
                  if p.is_file() and p.parent != takes) == [
        "bed.flac", "drip.flac", "hum.flac", "index.html", "manifest.json", "mix.flac",
        "room.flac", "sum.f32", "sum.json"]
    assert len(list(takes.glob("*.npz"))) == 4


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("scenes/*.yaml")),
                         ids=lambda p: p.stem)
def test_stem_keys_are_those_of_the_plans_as_asdict_writes_them(path: Path) -> None:
    """``stem_key`` reads a plan without ``dataclasses.asdict``'s deep copy; the text it hashes
    (so every earlier render's keys, and the stems they keep current) is the same."""
    from dataclasses import asdict

    from soundscape.arrange import arrange
    from soundscape.outputs.incremental import _plain
    from soundscape.pipelines.render import select_scenes

    seen = 0
    for sc in select_scenes(path, all_variants=True):
        arr = arrange(sc, {name: 4.0 for name in sc.elements})
        for plan in arr.elements:
            mine = json.dumps(_plain(plan), sort_keys=True, default=str)
            assert mine == json.dumps(asdict(plan), sort_keys=True, default=str), plan.name
            seen += len(plan.clips) + len(plan.loops)
    assert seen > 0
