"""Audition pages: overviews with known answers, loop seams, the page's embedded data, variant
links, ``soundscape open``; and the pages themselves loaded in headless Chromium."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from soundscape.arrange import LoopRun
from soundscape.mixer.loops import best_loop_points, loop_seams
from soundscape.outputs.page import FLOOR_DB, PAGE, overview
from tests.conftest import ROOT, run_cli, wav

SMALL = """\
name: small
duration: 6 s
seed: 5
defaults: {duration: 1 s}
elements:
  rain: {prompt: rain on a roof, loop: {crossfade: 200 ms}, volume: -6 dB, fade_in: 1 s}
  drip: {prompt: a drip, duration: 0.5 s, variations: 2, scatter: {interval: [1 s, 2 s]}}
  bell:
    prompt: a bell
    duration: 0.5 s
    at: [1 s, 4 s]
    automation: [{time: 0 s, level: 0 dB}, {time: 5 s, level: -20 dB}]
master: {loudness: -20 LUFS}
variants:
  night:
    elements:
      drip: null
      owl: {prompt: an owl, duration: 0.5 s, at: 2 s}
"""



def embedded(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert m is not None
    return json.loads(m.group(1))


# --- overviews ----------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2])
def test_overview_reads_known_levels(tmp_path: Path, sr: int, channels: int) -> None:
    """Four quarters of a 1 kHz sine at known amplitudes: each bin's peak is the amplitude and
    its RMS amplitude/sqrt(2) (the right channel, if any, at half the level)."""
    amps = [0.0, 0.5, 0.25, 1.0]
    quarter = sr // 2
    t = np.arange(quarter) / sr
    left = np.concatenate([a * np.sin(2 * np.pi * 1000 * t) for a in amps])
    audio = np.stack([left, 0.5 * left][:channels]).astype(np.float32)
    ov = overview(wav(tmp_path / "q.wav", audio, sr), bins=8)
    assert ov["bins"] == 8
    assert ov["seconds_per_bin"] == pytest.approx(0.25)
    weights = [1.0, 0.25][:channels]  # power of each channel relative to the left
    for k in range(8):
        a = amps[k // 2]
        if a == 0:
            assert ov["peak_db"][k] == ov["rms_db"][k] == FLOOR_DB
            continue
        rms = a / math.sqrt(2) * math.sqrt(sum(weights) / channels)
        assert ov["peak_db"][k] == round(20 * math.log10(a))
        assert ov["rms_db"][k] == round(20 * math.log10(rms))


def test_overview_of_a_file_shorter_than_the_bins(tmp_path: Path) -> None:
    ov = overview(wav(tmp_path / "s.wav", np.full((1, 5), 0.5, np.float32), 48000), bins=2000)
    assert ov["bins"] == 5 and ov["peak_db"] == [-6] * 5 and ov["rms_db"] == [-6] * 5


def test_overview_streams_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file longer than one read block gives the same bins as one read at once."""
    import soundscape.outputs.page as page

    rng = np.random.default_rng(1)
    audio = (rng.normal(0, 0.1, (2, 300_001)) * np.linspace(0, 1, 300_001)).astype(np.float32)
    path = wav(tmp_path / "n.wav", audio, 44100)
    streamed = overview(path, bins=777)
    monkeypatch.setattr(page, "READ_FRAMES", 10**9)
    assert streamed == overview(path, bins=777)
    assert streamed["peak_db"][-1] > streamed["peak_db"][10]  # the ramp is seen


@pytest.mark.parametrize("frames,channels,bins", [(5, 1, 2000), (1001, 2, 777),
                                                  (300_001, 2, 2000), (4001, 3, 4000),
                                                  (123_457, 2, 13)])
def test_overview_bins_equal_each_bins_own_slice(frames: int, channels: int,
                                                 bins: int) -> None:
    """Blocks of any size, cut where they cross bin edges, give each bin exactly the peak and
    power of its own slice of frames, worked out bin by bin."""
    from soundscape.outputs.page import OverviewAccumulator

    rng = np.random.default_rng(frames)
    audio = (rng.normal(0, 0.3, (channels, frames))
             * np.exp(rng.normal(0, 2, (1, frames)))).astype(np.float32)
    acc = OverviewAccumulator(frames, channels, bins)
    pos = 0
    while pos < frames:  # blocks shorter and longer than a bin
        k = int(rng.integers(1, 3 * frames // min(bins, frames) + 2))
        acc.add(audio[:, pos:pos + k])
        pos += k
    got = acc.result(48000.0)
    n = min(bins, frames)
    edges = np.linspace(0, frames, n + 1).round().astype(np.int64)
    peak = [float(np.abs(audio[:, a:b]).max()) for a, b in itertools.pairwise(edges)]
    rms = [math.sqrt(float(np.sum(np.square(audio[:, a:b], dtype=np.float64)))
                     / ((b - a) * channels)) for a, b in itertools.pairwise(edges)]

    def db(v: float) -> int:
        return max(FLOOR_DB, min(24, round(20 * math.log10(v)))) if v > 0 else FLOOR_DB

    assert got["bins"] == n
    assert got["peak_db"] == [db(v) for v in peak]
    assert got["rms_db"] == [db(v) for v in rms]


# --- loop seams -----------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [22050, 44100, 48000, 96000])
def test_loop_seams_without_crossfade_fall_on_take_lengths(sr: int) -> None:
    take = np.random.default_rng(0).normal(0, 0.1, (1, sr)).astype(np.float32)  # 1 s
    run = LoopRun("x", 0, 2.0, 10.0, None, 0.0, 0.5, 1.0, 0.0)
    ex = loop_seams(take, run, sr, total=10 * sr)
    assert ex["length_s"] == pytest.approx(8.0)
    assert ex["seams_s"] == pytest.approx([3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert (ex["fade_in_s"], ex["fade_out_s"], ex["seam_crossfade_s"]) == (0.5, 1.0, 0.0)


@pytest.mark.parametrize("sr", [22050, 48000])
def test_loop_seams_follow_the_chosen_loop_point(sr: int) -> None:
    take = np.random.default_rng(3).normal(0, 0.1, (2, 3 * sr)).astype(np.float32)
    xf = int(round(0.5 * sr))
    pts = best_loop_points(take, xf, sr)
    run = LoopRun("x", 0, 1.0, 9.0, None, 0.5, 0.0, 0.0, 0.0)
    ex = loop_seams(take, run, sr, total=60 * sr)
    period = (pts.end - pts.start - xf) / sr
    assert 1.0 <= period < 2.5  # the loop point lies in the take's last 2 s
    first = pts.start / sr  # later copies start at the loop start (after any intro)
    seams = [1.0 + k * period + first for k in range(1, 10) if k * period + first < 8.0]
    assert ex["seams_s"] == pytest.approx(seams, abs=1e-5)
    assert ex["length_s"] == pytest.approx(8.0)
    assert ex["seam_crossfade_s"] == pytest.approx(0.5, abs=1e-5)


# --- the page a render writes ----------------------------------------------------------------


def test_render_page_embeds_manifest_overviews_and_links(tmp_path: Path, tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    out = tmp_path / "out"
    code, text = run_cli("render", str(scene), "--model", str(tiny_model), "--out", str(out))
    assert code == 0, text
    page = out / "small" / PAGE
    data = embedded(page)
    manifest = json.loads((out / "small/manifest.json").read_text())
    assert data["manifest"] == manifest
    assert manifest["seed"] == 5
    assert set(data["overviews"]) == {"rain", "drip", "bell"}
    for name, ov in data["overviews"].items():
        assert ov["file"] == f"stems/{name}.wav" and len(ov["peak_db"]) == ov["bins"] == 2000
        assert ov["bins"] * ov["seconds_per_bin"] == pytest.approx(6.0)
    # the bell plays at 1 s and 4 s: loud there, silent before the first play
    bell = data["overviews"]["bell"]
    assert max(bell["peak_db"][:300]) == FLOOR_DB and max(bell["peak_db"][340:660]) > -60
    rain = next(e for e in manifest["elements"] if e["element"] == "rain")
    [loop] = rain["placements"]
    assert loop["fade_in_s"] == 1.0 and loop["length_s"] == pytest.approx(6.0)
    assert len(loop["seams_s"]) >= 5  # 1 s takes loop at least 5 times in 6 s
    bell_m = next(e for e in manifest["elements"] if e["element"] == "bell")
    assert bell_m["automation"] == [{"time_s": 0.0, "level_db": 0.0},
                                    {"time_s": 5.0, "level_db": -20.0}]
    assert data["siblings"] == [{"variant": None, "href": "index.html", "current": True}]
    # offline and self-contained: no address but the SVG namespace, no absolute file link
    html = page.read_text(encoding="utf-8")
    assert re.findall(r"https?://[^\s\"'`]+", html) == ["http://www.w3.org/2000/svg"]
    assert 'src="/' not in html and "file:///" not in html
    # a variant rendered later appears in the base page's links, and links back
    code, text = run_cli("render", str(scene), "--variant", "night", "--model",
                         str(tiny_model), "--out", str(out))
    assert code == 0, text
    assert embedded(page)["siblings"] == [
        {"variant": None, "href": "index.html", "current": True},
        {"variant": "night", "href": "night/index.html", "current": False}]
    night = embedded(out / "small/night" / PAGE)
    assert night["siblings"] == [
        {"variant": None, "href": "../index.html", "current": False},
        {"variant": "night", "href": "../night/index.html", "current": True}]
    assert set(night["overviews"]) == {"rain", "bell", "owl"}


def test_warnings_go_to_the_lane_they_name() -> None:
    from soundscape.outputs.page import _element_warnings

    def w(message: str, element: str | None = None) -> dict:
        return {"stage": "mix", "message": message, "element": element}

    mine, rest = _element_warnings(
        ["cups", "cup"], [w("cups: only 2 of 5 one-shots fit", "cups"),
                          w("stem cup peaks at +1.0 dBFS", "cup"),
                          w("cup at 58.0 s + 5.0 s exceeds the 60.0 s scene", "cup"),
                          w("limiter: 3 dB"), w("cups and cup collide", "nobody")])
    assert mine == {"cups": ["cups: only 2 of 5 one-shots fit"],
                    "cup": ["stem cup peaks at +1.0 dBFS",
                            "cup at 58.0 s + 5.0 s exceeds the 60.0 s scene"]}
    assert rest == ["limiter: 3 dB", "cups and cup collide"]


# --- soundscape open -------------------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import webbrowser

    urls: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: urls.append(url) or True)
    return urls


def fake_render(directory: Path, scene: str, variant: str | None) -> None:
    """A render folder with a manifest and a mix (no stems), enough to write a page."""
    directory.mkdir(parents=True)
    wav(directory / "mix.wav", np.zeros((2, 4800), np.float32), 48000)
    manifest = {"scene": scene, "variant": variant, "scene_file": None, "duration_s": 0.1,
                "sample_rate": 48000, "channels": 2, "format": "wav", "model": "m",
                "rendered": "now", "only": None, "elements": [], "generated": 0, "cached": 0,
                "warnings": [], "versions": {},
                "mix": {"file": "mix.wav", "loudness_lufs": None, "true_peak_dbtp": None,
                        "pre_master_lufs": None, "gain_db": 0.0, "limiter_reduction_db": 0.0,
                        "target_lufs": -18.0, "ceiling_dbtp": -1.0}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_open_a_variant_by_scene_file(tmp_path: Path, opened: list[str]) -> None:
    out = tmp_path / "r"
    fake_render(out / "rainy_cafe" / "night", "rainy_cafe", "night")
    code, text = run_cli("open", str(ROOT / "scenes/rainy_cafe.yaml"), "--variant", "night",
                         "--out", str(out))
    assert code == 0, text
    page = out / "rainy_cafe/night/index.html"
    assert opened == [page.resolve().as_uri()]
    assert page.is_file()  # a render older than pages gets its page now
    assert text.strip() == f"opened {page.resolve().as_uri()}"


def test_open_by_scene_name(tmp_path: Path, opened: list[str]) -> None:
    out = tmp_path / "r"
    fake_render(out / "forest", "forest", None)
    code, text = run_cli("open", "forest", "--out", str(out))
    assert code == 0, text
    assert opened == [(out / "forest/index.html").resolve().as_uri()]


def test_open_a_missing_render_is_one_error_line(tmp_path: Path, opened: list[str]) -> None:
    out = tmp_path / "r"
    code, text = run_cli("open", str(ROOT / "scenes/rainy_cafe.yaml"), "--variant", "night",
                         "--out", str(out))
    assert code == 1 and opened == []
    assert text.strip().splitlines() == [
        f"Error: no render of rainy_cafe --variant night in {out / 'rainy_cafe/night'}; render "
        f"it first (soundscape render SCENE --variant night --out {out})"]


def test_open_an_unknown_variant_is_one_error_line(tmp_path: Path, opened: list[str]) -> None:
    code, text = run_cli("open", str(ROOT / "scenes/rainy_cafe.yaml"), "--variant", "nite",
                         "--out", str(tmp_path))
    assert code == 1 and opened == [] and len(text.strip().splitlines()) == 1
    assert "unknown variant 'nite'; did you mean 'night'?" in text


def test_open_without_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import webbrowser

    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: False)
    fake_render(tmp_path / "forest", "forest", None)
    code, text = run_cli("open", "forest", "--out", str(tmp_path))
    url = (tmp_path / "forest/index.html").resolve().as_uri()
    assert code == 1
    assert text.strip().splitlines() == [f"Error: no web browser could be started; open {url} "
                                         f"yourself"]


def test_takes_page_keeps_odd_text_inside_its_data(tmp_path: Path) -> None:
    """A prompt that holds "</script>" or "<!--" cannot break out of the embedded data, and a
    scene path with a space is quoted in the command to copy."""
    from soundscape.outputs.page import write_takes_page

    folder = tmp_path / "takes/drip"
    takes = [(s, wav(folder / f"drip-seed{s}.wav", np.full((1, 800), 0.1 * s, np.float32), 8000))
             for s in (1, 2)]
    prompt = "a drip </script><!-- <script>alert(1)</script>"
    page = write_takes_page(folder, "my scene", "my scenes/a b.yaml", "drip", prompt, takes)
    data = embedded(page)
    assert data["prompt"] == prompt
    assert [t["keep"] for t in data["takes"]] == [
        f"soundscape takes 'my scenes/a b.yaml' drip --keep {s}" for s in (1, 2)]
    assert [t["file"] for t in data["takes"]] == ["drip-seed1.wav", "drip-seed2.wav"]
    assert [t["peak_db"][0] for t in data["takes"]] == [-20, -14]
    assert page.read_text().count("</script>") == 2  # the data block's and the code's


def test_overviews_of_several_files_are_each_files_overview(tmp_path: Path) -> None:
    """Read several at a time, each file still gets its own overview."""
    from soundscape.outputs.page import overviews_of

    rng = np.random.default_rng(4)
    paths = [wav(tmp_path / f"{i}.wav", (rng.normal(0, 0.1, (2, 30_000)) * (i + 1) / 5)
                 .astype(np.float32), 44100) for i in range(5)]
    got = overviews_of(paths)
    assert list(got) == paths
    assert [got[p] for p in paths] == [overview(p) for p in paths]
    assert len({tuple(got[p]["rms_db"]) for p in paths}) == 5

