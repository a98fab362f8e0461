"""What a plain request may change on ``soundscape serve``: a GET of a studio page validates
before it watches anything, watches only scenes, and starts no render for another site's page;
the index escapes what it shows; job arguments are checked; a job cancelled too late says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from soundscape.servers.http import build_app
from soundscape.servers.service import Service, Settings

from .servers_util import running, studio_folder


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, Any]]:
    root = tmp_path / "root"
    studio_folder(root)
    (root / "scenes/live.yaml").write_text((root / "scenes/live.yaml").read_text() +
                                           "variants:\n  night: {duration: 3 s}\n")
    app = build_app(Service(Settings(root=root)))
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client, root, app.state.studio


def test_a_bogus_variant_is_refused_before_it_is_watched(
        served: tuple[httpx.Client, Path, Any]) -> None:
    client, root, studio = served
    r = client.get("/studio/scenes/live.yaml", params={"variant": "bogus"})
    assert r.status_code == 422
    assert r.json()["error"] == ("Error: scenes/live.yaml: unknown variant 'bogus'; variants: "
                                 "night")
    assert studio.watches == {}
    for variant in (None, "night"):  # the scene and its real variant still render
        r = client.get("/studio/scenes/live.yaml", params={"variant": variant} if variant
                       else {})
        assert r.status_code == 200, r.text
    [w] = studio.watches.values()
    assert w.variants == {None, "night"} and w.error is None


@pytest.mark.parametrize("path", ["scenes/tone.wav", "scenes", "scenes/none.yaml"])
def test_only_scenes_are_watched(served: tuple[httpx.Client, Path, Any], path: str) -> None:
    client, root, studio = served
    r = client.get(f"/studio/{path}")
    assert r.status_code in (403, 404, 422), r.text
    with client.stream("GET", "/api/studio/events", params={"scene": path}) as r:
        assert r.status_code in (403, 404, 422)
    assert studio.watches == {}


def test_another_sites_page_starts_no_render(served: tuple[httpx.Client, Path, Any]) -> None:
    client, root, studio = served
    for headers in ({"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                    {"origin": "http://evil.example"}):
        r = client.get("/studio/scenes/live.yaml", headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"].endswith("may not start a render; open the page from this "
                                          "server")
        with client.stream("GET", "/api/studio/events", params={"scene": "scenes/live.yaml"},
                           headers=headers) as r:
            assert r.status_code == 403
        r = client.post("/api/element", json={"scene": "scenes/live.yaml", "element": "tone",
                                              "pan": 0.5}, headers=headers)
        assert r.status_code == 403
    assert studio.watches == {} and not (root / "renders/live").exists()
    # typed into the address bar, or from this server's own pages: rendered
    for site in ("none", "same-origin"):
        assert client.get("/studio/scenes/live.yaml",
                          headers={"sec-fetch-site": site}).status_code == 200
    assert (root / "renders/live/mix.wav").is_file()
    # a current render may be shown to a link from elsewhere; it starts nothing
    mtime = (root / "renders/live/mix.wav").stat().st_mtime_ns
    assert client.get("/studio/scenes/live.yaml",
                      headers={"sec-fetch-site": "cross-site"}).status_code == 200
    assert (root / "renders/live/mix.wav").stat().st_mtime_ns == mtime


def test_the_index_escapes_what_a_manifest_says(served: tuple[httpx.Client, Path, Any]) -> None:
    client, root, _ = served
    folder = root / "renders/x"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "scene": "<img src=x onerror=alert(1)>", "variant": None,
        "mix": {"file": "mix.wav", "loudness_lufs": "<script>alert(2)</script>"}}))
    r = client.get("/")
    assert r.status_code == 200
    assert "<script" not in r.text and "<img" not in r.text
    assert "&lt;script&gt;alert(2)&lt;/script&gt; LUFS" in r.text
    assert "script-src" not in r.headers["content-security-policy"]  # no script runs there
    page = client.get("/files/renders/x/manifest.json")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("body, error", [
    ({"scene": "scenes/live.yaml", "only": "tone"}, "'only' must be a list of element names"),
    ({"scene": "scenes/live.yaml", "only": [1]}, "'only' must be a list of element names"),
    ({"scene": "scenes/live.yaml", "force": "yes"}, "'force' must be true or false"),
    ({"kind": "audition", "scene": "scenes/live.yaml", "element": "tone", "n": "x"},
     "'n' must be a whole number from 1 to 64"),
    ({"kind": "audition", "scene": "scenes/live.yaml", "element": "tone", "n": 0},
     "'n' must be a whole number from 1 to 64"),
    ({"kind": "audition", "scene": "scenes/live.yaml", "element": "tone", "n": 10**6},
     "'n' must be a whole number from 1 to 64"),
])
def test_job_arguments_are_checked(served: tuple[httpx.Client, Path, Any],
                                   body: dict[str, Any], error: str) -> None:
    client, _, _ = served
    r = client.post("/api/jobs", json=body)
    assert (r.status_code, r.json()) == (400, {"error": f"Error: {error}"})
    assert client.get("/api/jobs").json() == []


def test_a_cancel_that_comes_too_late_is_reported_as_done(tmp_path: Path) -> None:
    from soundscape.servers.jobs import Jobs
    from soundscape.servers.mcp import error_lines

    root = tmp_path / "root"
    studio_folder(root)
    service = Service(Settings(root=root))
    jobs = Jobs(error_lines)

    def cancel_mid_mix(events: Any, cancel: threading.Event) -> Any:
        def hook(ev: dict[str, Any]) -> None:
            events(ev)
            if ev["type"] == "progress" and ev["label"] == "mix live" and ev["step"] == 0:
                cancel.set()  # the cancel arrives while the mix is being written

        return service.render("scenes/live.yaml", events=hook, cancel=cancel)

    job = jobs.start("render", {}, cancel_mid_mix)
    with job.changed:
        job.changed.wait_for(lambda: job.state != "running", 60)
    assert job.state == "done", job.error
    assert job.events[-1]["type"] == "done"
    assert job.events[-1]["note"] == "finished before the cancel took effect"
    assert (root / "renders/live/mix.wav").is_file()
    assert (root / "renders/live/manifest.json").is_file()


def test_takes_keep_waits_for_the_studios_edit_lock(tmp_path: Path) -> None:
    import time

    from typer.testing import CliRunner

    from soundscape.cli import app
    from soundscape.scene import load_scene

    root = tmp_path / "root"
    scene = studio_folder(root)
    service = Service(Settings(root=root))
    results: list[int] = []
    with service.edit_lock(scene):
        worker = threading.Thread(target=lambda: results.append(CliRunner().invoke(
            app, ["takes", str(scene), "tone", "--keep", "77", "--out",
                  str(root / "renders")]).exit_code))
        worker.start()
        time.sleep(1.0)
        assert results == [] and load_scene(scene).elements["tone"].seed is None  # waiting
    worker.join(30)
    assert results == [0] and load_scene(scene).elements["tone"].seed == 77
