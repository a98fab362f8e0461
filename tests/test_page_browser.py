"""Audition pages in a real browser: headless Debian Chromium driven by Playwright.

Skipped, with the reason, where /usr/bin/chromium is missing (``apt-get install chromium``;
``.ci/run`` installs it). Pages are opened from ``file://``, as a user opens them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, SHIPPED, run_cli

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="no browser: /usr/bin/chromium is missing "
                       "(install Debian's chromium: apt-get install chromium)"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]



class Browser:
    """One Chromium with an empty profile; collects every console error and page error."""

    def __init__(self, profile: Path) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        # media loads are aborted and retried as ranges while a file plays: not a failure
        self.page.on("requestfailed", lambda r: self.errors.append(
            f"request failed: {r.url}: {r.failure}") if r.failure != "net::ERR_ABORTED" else None)

    def open(self, path: Path) -> Any:
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("#timeline .row, .take")
        return self.page

    def clean(self) -> list[str]:
        """Every problem so far: console errors, page errors, failed loads, and players that
        could not load their file."""
        broken = self.page.eval_on_selector_all(
            "audio", "as => as.filter(a => a.error).map(a => a.getAttribute('src'))")
        status = self.page.text_content("#status") if self.page.locator("#status").count() \
            else ""
        return self.errors + [f"cannot play {b}" for b in broken] + ([status] if status else [])

    def close(self) -> None:
        self.context.close()
        self._pw.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def check_page_matches_manifest(page: Any, manifest: dict) -> None:
    """One lane per element, one marker per placement (loop runs, plays, every one-shot), in
    the manifest's order and at its start times; one seam mark per loop seam."""
    names = [e["element"] for e in manifest["elements"]]
    assert page.eval_on_selector_all(".lane", "ls => ls.map(l => l.dataset.element)") == names
    for e in manifest["elements"]:
        for kind in ("loop", "play"):
            want = sorted(p["start_s"] for p in e["placements"] if p["type"] == kind)
            got = page.eval_on_selector_all(
                f'.lane[data-element="{e["element"]}"] .marker[data-type="{kind}"]',
                "ms => ms.map(m => parseFloat(m.dataset.start))")
            assert sorted(got) == pytest.approx(want), (e["element"], kind)
        lane = f'.lane[data-element="{e["element"]}"]'
        seams = sum(len(p.get("seams_s", [])) for p in e["placements"])
        assert page.locator(f"{lane} .seam").count() == seams
        fades = [(k, p[f"fade_{k}_s"] > 0) for p in e["placements"] for k in ("in", "out")]
        assert page.locator(f"{lane} .fade").count() == sum(f for _, f in fades)
        points = page.eval_on_selector_all(f"{lane} svg.automation polyline",
                                           "ls => ls.map(l => l.getAttribute('points'))")
        # the line holds the keyframes plus the held levels at the scene's start and end
        assert [len(p.split()) for p in points] == \
            ([len(e["automation"]) + 2] if e["automation"] else [])
    assert page.locator(".marker").count() == sum(len(e["placements"])
                                                  for e in manifest["elements"])


def playhead(page: Any) -> float:
    return float(page.get_attribute("#playhead", "data-time"))


@pytest.fixture(scope="module")
def rainy_cafe(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The rainy cafe, all variants, rendered with the tiny model (own take cache)."""
    out = tmp_path_factory.mktemp("rainy")
    code, text = run_cli("render", str(ROOT / "scenes/rainy_cafe.yaml"), "--all-variants",
                         "--model", str(tiny_model), "--out", str(out / "r"),
                         "--cache-dir", str(out / "cache"))
    assert code == 0, text
    return out / "r" / "rainy_cafe"


def test_rainy_cafe_page(rainy_cafe: Path, browser: Browser, tmp_path: Path) -> None:
    manifest = json.loads((rainy_cafe / "manifest.json").read_text())
    page = browser.open(rainy_cafe / "index.html")
    check_page_matches_manifest(page, manifest)
    assert page.locator('.lane[data-element="cups"] .marker[data-type="play"]').count() >= 3
    assert page.text_content("#title") == "rainy_cafe"
    meta = page.text_content("#meta")
    assert "rainy_cafe.yaml" in meta and "seed 7" in meta
    assert "-18.0 LUFS (target -18.0)" in page.text_content("#figures")
    assert page.eval_on_selector_all("#variants a", "as => as.map(a => a.textContent)") == \
        ["base", "day", "night"]

    # the mix plays and the playhead follows it
    page.click("#play")
    page.wait_for_function("parseFloat(document.getElementById('playhead').dataset.time) > 0.3",
                           timeout=10_000)
    first = playhead(page)
    page.wait_for_timeout(700)
    assert playhead(page) > first + 0.3
    assert page.evaluate("document.getElementById('mix-audio').paused") is False
    page.click("#play")  # pause
    assert page.evaluate("document.getElementById('mix-audio').paused") is True

    # click-to-seek: the middle of a lane is the middle of the scene
    box = page.locator('.lane[data-element="thunder"] .track').bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert playhead(page) == pytest.approx(30.0, abs=0.2)
    assert page.evaluate("document.getElementById('mix-audio').currentTime") == \
        pytest.approx(30.0, abs=0.2)

    # mute a stem: its player is muted, the others are not, playback moves to the stems
    muted = "n => document.querySelector(`audio[data-stem='${n}']`).muted"
    assert page.evaluate(f"({muted})('rain')") is False
    page.click('.lane[data-element="rain"] button.mute')
    assert page.evaluate(f"({muted})('rain')") is True
    assert [page.evaluate(f"({muted})('{n}')") for n in ("cafe", "cups", "thunder")] == \
        [False] * 3
    assert page.get_attribute('.lane[data-element="rain"] button.mute', "aria-pressed") == "true"
    assert page.is_checked('input[name="source"][value="stems"]')
    # solo wins over mute: only the soloed stem sounds
    page.click('.lane[data-element="cups"] button.solo')
    assert [page.evaluate(f"({muted})('{n}')") for n in ("rain", "cafe", "cups", "thunder")] \
        == [True, True, False, True]
    # the stems play together, in step, from the seek position
    page.click("#play")
    page.wait_for_function("parseFloat(document.getElementById('playhead').dataset.time) > 30.5",
                           timeout=10_000)
    times = page.eval_on_selector_all("audio[data-stem]", "as => as.map(a => a.currentTime)")
    assert len(times) == 4 and max(times) - min(times) < 0.25 and min(times) > 30.0
    page.click("#play")

    shot = tmp_path / "rainy_cafe.png"
    page.screenshot(path=str(shot), full_page=True)
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24])[0] == 1400
    assert browser.clean() == []

    # the variant links lead to pages that load as cleanly
    page.click('#variants a[data-variant="night"]')
    page.wait_for_selector('.lane[data-element="crickets"]')
    assert page.url.endswith("/rainy_cafe/night/index.html")
    check_page_matches_manifest(page, json.loads((rainy_cafe / "night/manifest.json")
                                                 .read_text()))
    assert browser.clean() == []


def test_takes_page(tmp_path: Path, tiny_model: Path, browser: Browser) -> None:
    from tests.test_page import SMALL

    scene = tmp_path / "small.yaml"
    scene.write_text(SMALL)
    code, text = run_cli("takes", str(scene), "drip", "-n", "3", "--model", str(tiny_model),
                         "--out", str(tmp_path / "o"))
    assert code == 0, text
    folder = tmp_path / "o/small/takes/drip"
    seeds = sorted(int(p.stem.split("seed")[1]) for p in folder.glob("drip-seed*.wav"))
    page = browser.open(folder / "index.html")
    cards = page.eval_on_selector_all(".take", "cs => cs.map(c => [parseInt(c.dataset.seed), "
                                      "c.querySelector('code').textContent, "
                                      "c.querySelector('audio').getAttribute('src')])")
    assert sorted(cards) == [[s, f"soundscape takes {scene} drip --keep {s}",
                              f"drip-seed{s}.wav"] for s in seeds]
    page.evaluate("document.querySelector('.take audio').play()")
    page.wait_for_function("document.querySelector('.take audio').currentTime > 0.1",
                           timeout=10_000)
    assert browser.clean() == []


@pytest.mark.parametrize("scene", SHIPPED)
def test_every_scene_page(scene: str, shipped_renders: dict[str, list[Path]],
                          browser: Browser) -> None:
    """The page of every scene in scenes/ and of each variant, rendered whole with the tiny
    model, loads cleanly and matches its manifest; its variant links name the others."""
    folders = shipped_renders[scene]
    declared = yaml.safe_load((ROOT / "scenes" / scene).read_text()).get("variants") or {}
    assert len(folders) == 1 + len(declared)
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        page = browser.open(folder / "index.html")
        check_page_matches_manifest(page, manifest)
        links = page.eval_on_selector_all("#variants a", "as => as.map(a => a.dataset.variant)")
        assert links == ([""] + sorted(declared) if declared else [])
        assert browser.clean() == [], folder
