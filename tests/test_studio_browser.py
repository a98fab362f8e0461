"""The live studio in a real browser (headless Debian Chromium through Playwright, as the audition
page tests): a volume dragged on the page is written into the YAML with its comments kept, only
that element's stem is rendered again, and both open tabs show the new loudness."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyloudnorm
import pytest
import soundfile

from soundscape.servers.http import build_app
from soundscape.servers.service import Service, Settings

from .servers_util import STUDIO_SCENE, running, studio_folder
from .test_page_browser import CHROMIUM, Browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="no browser: /usr/bin/chromium is missing "
                       "(install Debian's chromium: apt-get install chromium)"),
]


def until(check: Callable[[], Any], timeout_s: float = 60, what: str = "") -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def lufs(path: Path) -> float:
    audio, sr = soundfile.read(str(path))
    return float(pyloudnorm.Meter(sr).integrated_loudness(np.asarray(audio)))


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "root"
    studio_folder(root)
    with running(build_app(Service(Settings(root=root)), ("scenes/live.yaml",))) as url:
        yield url, root


def row_text(page: Any, element: str, cls: str) -> str:
    return str(page.text_content(f'#studio-elements tr[data-element="{element}"] .{cls}'))


def test_move_a_volume(studio: tuple[str, Path], tmp_path: Path) -> None:
    url, root = studio
    scene = root / "scenes/live.yaml"
    browser = Browser(tmp_path / "profile")
    try:
        a = browser.page
        a.goto(f"{url}/studio/scenes/live.yaml")
        a.wait_for_selector('#studio-elements tr[data-element="tone"]')
        b = browser.context.new_page()
        b.goto(f"{url}/studio/scenes/live.yaml")
        b.wait_for_selector('#studio-elements tr[data-element="tone"]')
        out = root / "renders/live"
        manifest = json.loads((out / "manifest.json").read_text())
        tone = next(e for e in manifest["elements"] if e["element"] == "tone")
        assert row_text(a, "tone", "lufs") == f"{tone['loudness_lufs']:.1f}"
        assert a.input_value('tr[data-element="tone"] input.volume') == "-12"
        stems = {n: out / f"stems/{n}.wav" for n in ("tone", "hum")}
        before = {n: p.stat().st_mtime_ns for n, p in stems.items()}
        loud_before = lufs(stems["tone"])
        version = int(a.get_attribute("body", "data-studio-version"))

        # drag the tone's volume slider to the right with the mouse
        slider = a.locator('tr[data-element="tone"] input.volume')
        box = slider.bounding_box()
        y = box["y"] + box["height"] / 2
        a.mouse.move(box["x"] + box["width"] * 48 / 72, y)  # about the -12 dB thumb
        a.mouse.down()
        a.mouse.move(box["x"] + box["width"] * 57 / 72, y, steps=8)
        a.mouse.up()
        moved = float(a.input_value('tr[data-element="tone"] input.volume'))
        assert -12 < moved <= 12, moved

        # the file: exactly the volume line changed, its comment kept
        line = f"    volume: {moved:g} dB    # moved by the page"
        until(lambda: line in scene.read_text(), 30, "the YAML to change")
        diff = [x for x in difflib.ndiff(STUDIO_SCENE.splitlines(), scene.read_text()
                                         .splitlines()) if x[:2] in ("- ", "+ ")]
        assert diff == ["-     volume: -12 dB    # moved by the page", f"+ {line}"]

        # the page: a new state, the new loudness, in both tabs
        until(lambda: int(a.get_attribute("body", "data-studio-version")) > version and
              json.loads((out / "manifest.json").read_text())["elements"][0]["loudness_lufs"]
              != tone["loudness_lufs"], 60, "the re-render")
        new = json.loads((out / "manifest.json").read_text())
        new_tone = next(e for e in new["elements"] if e["element"] == "tone")
        for page in (a, b):
            until(lambda p=page: row_text(p, "tone", "lufs") ==
                  f"{new_tone['loudness_lufs']:.1f}", 30, "the new loudness on the page")
            assert page.input_value('tr[data-element="tone"] input.volume') == f"{moved:g}"
            nums = page.text_content('#timeline .lane[data-element="tone"] .nums')
            assert nums.startswith(f"{new_tone['loudness_lufs']:.1f} LUFS")
        # only the tone's stem was rendered again; it is louder by the move (pyloudnorm)
        after = {n: p.stat().st_mtime_ns for n, p in stems.items()}
        assert after["hum"] == before["hum"] and after["tone"] != before["tone"]
        assert lufs(stems["tone"]) - loud_before == pytest.approx(moved + 12, abs=0.05)
        assert new_tone["loudness_lufs"] - tone["loudness_lufs"] == \
            pytest.approx(moved + 12, abs=0.05)

        # mute the hum on tab B: one line added to the file, the hum stem silent on both tabs
        b.check('tr[data-element="hum"] input.mute')
        until(lambda: "    mute: true\n" in scene.read_text(), 30, "mute in the YAML")
        assert [x for x in difflib.ndiff(STUDIO_SCENE.splitlines(), scene.read_text()
                                         .splitlines()) if x[:2] == "+ "] == \
            [f"+ {line}", "+     mute: true"]
        for page in (a, b):
            until(lambda p=page: row_text(p, "hum", "lufs") == "-inf", 30, "the muted hum")
            assert page.is_checked('tr[data-element="hum"] input.mute')
        assert not np.any(soundfile.read(str(stems["hum"]))[0])
        before["hum"] = stems["hum"].stat().st_mtime_ns

        # an edit saved in an editor re-renders too and reaches the pages
        scene.write_text(scene.read_text().replace("volume: -18 dB", "volume: -24 dB")
                         .replace("mute: true", "mute: false"))
        until(lambda: b.input_value('tr[data-element="hum"] input.volume') == "-24", 60,
              "the editor's save to reach the page")
        until(lambda: stems["hum"].stat().st_mtime_ns != before["hum"], 30, "the hum stem")
        until(lambda: not a.is_checked('tr[data-element="hum"] input.mute'), 30, "unmuted")
        assert lufs(stems["hum"]) == pytest.approx(lufs(root / "scenes/hum.wav") - 24,
                                                   abs=0.2)
        # a scene saved half-written: the pages say what is wrong, and recover once it is fixed
        good = scene.read_text()
        scene.write_text(good.replace("volume: -24 dB", "volume: -24 dbb"))
        until(lambda: "elements.hum.volume: '-24 dbb' is not a level" in
              str(b.text_content("#studio-status")), 30, "the error on the page")
        assert str(b.text_content("#studio-status")).startswith("Error: scenes/live.yaml:")
        scene.write_text(good.replace("volume: -24 dB", "volume: -20 dB"))
        until(lambda: a.input_value('tr[data-element="hum"] input.volume') == "-20", 30,
              "the fixed scene on the page")
        assert browser.clean() == []
    finally:
        browser.close()


def test_keep_an_auditioned_take(tmp_path: Path, tiny_model: Path) -> None:
    import httpx

    from .servers_util import TINY_SCENE

    root = tmp_path / "root"
    (root / "scenes").mkdir(parents=True)
    scene = root / "scenes/small.yaml"
    scene.write_text(TINY_SCENE)
    service = Service(Settings(root=root, model=str(tiny_model)))
    browser = Browser(tmp_path / "profile")
    with running(build_app(service)) as url:
        try:
            job = httpx.post(f"{url}/api/jobs", json={"kind": "audition", "element": "rain",
                                                      "scene": "scenes/small.yaml", "n": 2})
            until(lambda: httpx.get(f"{url}/api/jobs/{job.json()['id']}").json()["state"]
                  == "done", 120, "the audition")
            seeds = sorted(int(p.stem.rsplit("seed", 1)[1]) for p in
                           (root / "renders/small/takes/rain").glob("*.wav"))
            page = browser.page
            page.goto(f"{url}/studio/scenes/small.yaml")
            take = 'tr[data-element="rain"] select.take'
            page.wait_for_selector(take)
            assert page.eval_on_selector_all(f"{take} option", "os => os.map(o => +o.value)") \
                == seeds
            assert page.input_value(take) == str(seeds[0])
            stem = root / "renders/small/stems/rain.wav"
            mtime = stem.stat().st_mtime_ns
            page.select_option(take, str(seeds[1]))
            until(lambda: f"seed: {seeds[1]}" in scene.read_text(), 30, "the seed in the YAML")
            assert scene.read_text() == TINY_SCENE.replace("volume: -6 dB}",
                                                           f"volume: -6 dB, seed: {seeds[1]}}}")
            until(lambda: stem.stat().st_mtime_ns != mtime, 60, "the rain stem")
            until(lambda: page.input_value(take) == str(seeds[1]) and
                  page.get_attribute("#studio-status", "class") == "ok", 60, "the page's take")
            manifest = json.loads((root / "renders/small/manifest.json").read_text())
            assert [t["seed"] for t in manifest["elements"][0]["takes"]] == [seeds[1]]
            assert browser.clean() == []
        finally:
            browser.close()
