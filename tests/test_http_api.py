"""The HTTP API of ``soundscape serve`` with an HTTP client: a render job's progress as
server-sent events, cancelling one (what a Ctrl-C leaves), paths out of the root refused,
oversize bodies refused, two edits at once both written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from soundscape.scene import load_scene
from soundscape.servers.http import MAX_BODY_BYTES, build_app
from soundscape.servers.service import Service, Settings

from .servers_util import TINY_SCENE, running, studio_folder


def sse(client: httpx.Client, url: str) -> Iterator[dict[str, Any]]:
    """The events of a server-sent event stream, each as its JSON data plus its name."""
    with client.stream("GET", url, timeout=300) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                yield {"event": name, **json.loads(line.split(":", 1)[1])}


@pytest.fixture
def server(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path / "root"
    (root / "scenes").mkdir(parents=True)
    (root / "scenes/small.yaml").write_text(TINY_SCENE)
    (root / "scenes/long.yaml").write_text(TINY_SCENE.replace("name: small", "name: long")
                                           .replace("duration: 1 s", "duration: 4 s"))
    studio_folder(root)
    service = Service(Settings(root=root, model=str(tiny_model)))
    with running(build_app(service)) as url, httpx.Client(base_url=url) as client:
        yield client, root


def test_render_job_progress_events(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    r = client.post("/api/jobs", json={"kind": "render", "scene": "scenes/small.yaml"})
    assert r.status_code == 202
    job = r.json()
    events = list(sse(client, job["events_url"]))
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    mixing = [(e["step"], e["total"]) for e in events if e["event"] == "progress"
              and e["label"] == "mix small"]
    assert mixing == [(0, 1), (1, 1)]
    assert events[-2]["label"] == "mix small"  # generation first, then the mix
    steps = [e for e in events if e["event"] == "progress" and e["label"] != "mix small"]
    assert steps, kinds
    assert [e["step"] for e in steps] == sorted(e["step"] for e in steps)
    assert steps[-1]["step"] >= steps[-1]["total"]  # audiocraft counts one past its total
    assert [e["seq"] for e in events] == list(range(len(events)))
    result = events[-1]["result"]["renders"][0]
    assert result["mix"] == "renders/small/mix.wav"
    assert (root / result["mix"]).is_file()
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "done"
    m = client.get("/api/manifest", params={"path": "renders/small"}).json()
    assert m == json.loads((root / "renders/small/manifest.json").read_text())
    assert client.get("/files/renders/small/mix.wav").content == \
        (root / "renders/small/mix.wav").read_bytes()


def test_cancel_leaves_what_ctrl_c_leaves(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    job = client.post("/api/jobs", json={"scene": "scenes/long.yaml"}).json()
    events = []
    for e in sse(client, job["events_url"]):
        events.append(e)
        if e["event"] == "progress" and len(events) == 1 or \
                e["event"] == "progress" and not any(x["event"] == "cancel" for x in events):
            assert client.delete(f"/api/jobs/{job['id']}").status_code == 202
            events.append({"event": "cancel"})
    assert events[-1]["event"] == "cancelled"
    assert events[-1]["error"].startswith("Error: cancelled")
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[-1]["step"] < progress[-1]["total"]  # stopped mid-generation
    state = client.get(f"/api/jobs/{job['id']}").json()
    assert state["state"] == "cancelled"
    out = root / "renders"
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".inline" not in p.parts]
    assert leftovers == []  # no mix, no stem, no temporary file, no manifest
    # and the same render afterwards completes
    again = client.post("/api/jobs", json={"scene": "scenes/long.yaml"}).json()
    assert list(sse(client, again["events_url"]))[-1]["event"] == "done"
    assert (out / "long/mix.wav").is_file()


@pytest.mark.parametrize("given", ["../outside.yaml", "/etc/passwd", "scenes/../../outside.yaml",
                                   "link/outside.yaml", "escape.yaml"])
def test_paths_out_of_the_root_are_refused(server: tuple[httpx.Client, Path],
                                           given: str) -> None:
    client, root = server
    outside = root.parent / "outside.yaml"
    outside.write_text(TINY_SCENE)
    (root / "link").symlink_to(root.parent, target_is_directory=True)
    (root / "escape.yaml").symlink_to(outside)
    for r in (client.post("/api/validate", json={"scene": given}),
              client.post("/api/jobs", json={"scene": given}),
              client.get("/api/manifest", params={"path": given}),
              client.post("/api/element", json={"scene": given, "element": "rain",
                                                "volume_db": -3})):
        assert r.status_code == 403, (r.status_code, r.text)
        assert r.json()["error"].startswith(f"Error: {given}: ")
    raw = given.replace("..", "%2e%2e")
    r = client.get(f"/files/{raw}" if not raw.startswith("/") else "/files/%2Fetc%2Fpasswd")
    assert r.status_code in (403, 404) and "root" in r.json()["error"]
    assert outside.read_text() == TINY_SCENE
    assert client.get("/api/jobs").json() == []


def test_a_scene_reading_a_recording_out_of_the_root_is_refused(
        server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    text = (root / "scenes/live.yaml").read_text().replace("file: tone.wav",
                                                          "file: ../../tone.wav")
    (root.parent / "tone.wav").write_bytes((root / "scenes/tone.wav").read_bytes())
    (root / "scenes/sneaky.yaml").write_text(text)
    r = client.post("/api/validate", json={"scene": "scenes/sneaky.yaml"})
    assert r.status_code == 403
    assert r.json()["error"] == (
        "Error: scenes/sneaky.yaml: elements.tone.file: scenes/../../tone.wav is outside the "
        "server's root; copy the recording under it")


def test_oversize_bodies_are_refused(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    big = json.dumps({"scene": "name: x\n" + "#" * MAX_BODY_BYTES})
    r = client.post("/api/validate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == f"Error: the request body is over {MAX_BODY_BYTES} bytes"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = client.post("/api/validate", content=chunks())
    assert r.status_code == 413
    # a scene as YAML text is bounded like a scene file
    r = client.post("/api/validate", json={"scene": "name: x\n" + "#" * (1 << 20)})
    assert r.status_code == 422 and "a scene is at most 1 MiB" in r.json()["error"]
    assert not (root / "renders/.inline").exists() or \
        not list((root / "renders/.inline").iterdir())


def test_foreign_hosts_and_origins_are_refused(server: tuple[httpx.Client, Path]) -> None:
    client, _ = server
    assert client.get("/api/renders", headers={"host": "evil.example:80"}).status_code == 421
    r = client.post("/api/validate", json={"scene": "scenes/small.yaml"},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403


def test_two_edits_at_once_are_both_written(server: tuple[httpx.Client, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client, root = server
    from soundscape.scene import edit

    real = edit.set_scalar

    def slow(text: str, *args: Any, **kwargs: Any) -> str:
        time.sleep(0.3)  # a read-modify-write that another one could overtake
        return real(text, *args, **kwargs)

    monkeypatch.setattr(edit, "set_scalar", slow)
    answers: dict[str, int] = {}

    def move(element: str, volume_db: float) -> None:
        r = client.post("/api/element", json={"scene": "scenes/live.yaml", "element": element,
                                              "volume_db": volume_db})
        answers[element] = r.status_code

    threads = [threading.Thread(target=move, args=a) for a in (("tone", -7.5), ("hum", -25))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {"tone": 200, "hum": 200}
    scene = load_scene(root / "scenes/live.yaml")
    assert scene.elements["tone"].volume == pytest.approx(-7.5)
    assert scene.elements["hum"].volume == pytest.approx(-25)
    text = (root / "scenes/live.yaml").read_text()
    assert "    volume: -7.5 dB    # moved by the page\n" in text


def test_audition_job_then_keep_a_take(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    job = client.post("/api/jobs", json={"kind": "audition", "scene": "scenes/small.yaml",
                                         "element": "rain", "n": 2}).json()
    last = list(sse(client, job["events_url"]))[-1]
    assert last["event"] == "done", last
    takes = last["result"]["takes"]
    assert len(takes) == 2 and all((root / t["file"]).is_file() for t in takes)
    assert (root / last["result"]["page"]).is_file()
    before = (root / "scenes/small.yaml").read_text()
    r = client.post("/api/keep", json={"scene": "scenes/small.yaml", "element": "rain",
                                       "seed": takes[1]["seed"]})
    assert r.status_code == 200, r.text
    assert r.json()["set"] == "elements.rain.seed"
    after = (root / "scenes/small.yaml").read_text()
    old = next(x for x in before.splitlines() if x.startswith("  rain:"))
    assert after == before.replace(old, old[:-1] + f", seed: {takes[1]['seed']}}}")
    assert load_scene(root / "scenes/small.yaml").elements["rain"].seed == takes[1]["seed"]
    r = client.post("/api/keep", json={"scene": "scenes/small.yaml", "element": "nope",
                                       "seed": 1})
    assert r.status_code == 422
    assert r.json()["error"] == "Error: scenes/small.yaml: no element 'nope' in the base scene " \
                                "(give --variant for an element of a variant)"


def test_bind_elsewhere_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from soundscape.cli import app

    seen: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, host, port, **kw: seen.append(host))
    res = CliRunner().invoke(app, ["serve", "--root", str(tmp_path), "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert seen == ["0.0.0.0"]
    assert "warning: binding 0.0.0.0: anyone who can reach this address can render scenes " \
        "and write files under the root" in res.stderr
    res = CliRunner().invoke(app, ["serve", "--root", str(tmp_path)])
    assert seen[-1] == "127.0.0.1" and "warning" not in res.stderr
    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, host, port, **kw: apps.append(app_))
    res = CliRunner().invoke(app, ["mcp", "--transport", "http", "--root", str(tmp_path),
                                   "--host", "0.0.0.0"])
    assert res.exit_code == 0 and "warning: binding 0.0.0.0" in res.stderr
    assert [r.path for r in apps[0].routes] == ["/mcp"]
    res = CliRunner().invoke(app, ["serve", "--root", str(tmp_path / "nope")])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"Error: --root {tmp_path / 'nope'} is not a folder"


def test_pan_and_bad_values(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    scene = root / "scenes/live.yaml"
    before = scene.read_text()
    r = client.post("/api/element", json={"scene": "scenes/live.yaml", "element": "tone",
                                          "pan": -0.5})
    assert r.status_code == 200 and r.json()["set"] == {"elements.tone.pan": "-0.5"}
    assert scene.read_text() == before.replace("    pan: 0\n", "    pan: -0.5\n")
    for body, error in (
            ({"pan": 2}, "Error: pan: 2; give -1 (left) to 1 (right)"),
            ({"volume_db": "loud"}, "Error: 'volume_db' must be a number"),
            ({"volume_db": 60}, "Error: volume: 60 dB; give -120 to 24 dB"),
            ({}, "Error: nothing to change: give volume_db, pan or mute")):
        r = client.post("/api/element", json={"scene": "scenes/live.yaml", "element": "tone",
                                              **body})
        assert (r.status_code, r.json()["error"]) == (400, error)
    assert scene.read_text() == before.replace("    pan: 0\n", "    pan: -0.5\n")


def test_studio_of_a_scene_that_does_not_render(server: tuple[httpx.Client, Path]) -> None:
    client, root = server
    (root / "scenes/bad.yaml").write_text("name: bad\nduration: 10 s\nelements:\n  a: {file: "
                                          "tone.wav, volume: -6 dbb}\n")
    r = client.get("/studio/scenes/bad.yaml")
    assert r.status_code == 422
    assert r.json()["error"] == ("Error: scenes/bad.yaml:4: elements.a.volume: '-6 dbb' is not "
                                 "a level; write e.g. '-6 dB' or 0.5")
    assert client.get("/studio/scenes/none.yaml").status_code == 404
