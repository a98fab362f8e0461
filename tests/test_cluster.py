"""Takes generated on a Ray cluster (--cluster): the same bits as a local run, dead actors,
a second run, the missing extra, an unreachable address.

One local Ray cluster serves the whole session (``ray.init`` costs seconds); its pools use two
actors of one CPU each on four CPUs, below the cluster's size so nothing waits for a CPU. The
extra is installed in CI, so these tests run there; they skip only where Ray is not importable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundscape.audio_io import read_audio
from soundscape.cli import app
from soundscape.takes.cluster import ClusterError, require_ray

from .conftest import env_without_pytest

try:  # through soundscape's own import, which keeps a `uv run` driver's workers on this Python
    ray = require_ray()
except ClusterError:
    if os.environ.get("CI"):  # CI installs the cluster extra: these tests must run there
        raise
    pytest.skip("Ray is not installed (uv sync --extra cluster)", allow_module_level=True)

SCENE = """\
name: small
duration: 4 s
seed: 7
defaults: {duration: 1 s}
elements:
  rain: {prompt: rain on a roof, loop: {crossfade: 200 ms}, volume: -6 dB}
  drip: {prompt: a drip, duration: 0.5 s, variations: 3, scatter: {interval: [1 s, 2 s]}}
master: {loudness: -20 LUFS}
"""

SFX = """\
name: kit
defaults: {duration: 0.5 s, variations: 2}
sounds:
  - {name: knock, prompt: a knock on a door, seed: 3}
  - {name: creak, prompt: a creak}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster for the session, which ``--cluster ray`` then joins (a process
    already connected to Ray uses that connection). Only this module uses it, so it is started
    once and stopped when the module ends: the rest of the suite runs without Ray's processes
    and threads beside it (and forks no process with them)."""
    from soundscape.takes.cluster.job import close_session

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    close_session()
    ray.shutdown()


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    (d / "small.yaml").write_text(SCENE)
    (d / "kit.yaml").write_text(SFX)
    return {"scene": d / "small.yaml", "sfx": d / "kit.yaml"}


@pytest.fixture(scope="module")
def local(tiny_model: Path, files: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene and the SFX list rendered without a cluster: the reference."""
    root = tmp_path_factory.mktemp("local")
    for cmd, src in (("render", files["scene"]), ("sfx", files["sfx"])):
        code, text = cli(cmd, str(src), "--model", str(tiny_model), "--cache-dir",
                         str(root / "cache"), "--out", str(root / "out"))
        assert code == 0, text
    return root


def takes(cache: Path) -> dict[str, dict]:
    """Every sidecar of a take store, by key."""
    return {p.stem: json.loads(p.read_text()) for p in (cache / "takes").rglob("*.json")
            if not p.name.startswith(".")}


def assert_same_takes(reference: Path, cache: Path, keys: set[str] | None = None) -> None:
    ref, got = takes(reference), takes(cache)
    keys = set(ref) if keys is None else keys
    assert keys <= set(got)
    for k in keys:
        assert got[k]["audio_sha256"] == ref[k]["audio_sha256"], k
        made = got[k]["generator"]
        assert made["host"] == socket.gethostname() and len(made["node"]) == 12


def digest(path: Path) -> str:
    audio, sr = read_audio(path)
    return hashlib.sha256(audio.tobytes() + str(sr).encode()).hexdigest()


def test_render_on_cluster_equals_local(cluster: None, tiny_model: Path, files: dict[str, Path],
                                        local: Path, tmp_path: Path) -> None:
    code, text = cli("render", str(files["scene"]), "--model", str(tiny_model), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--cluster", "ray",
                     "--actors", "2", "--max-batch", "2")
    assert code == 0, text
    assert "write takes into the take store" in text  # the probe found the shared folder
    keys = {k for k, v in takes(local / "cache").items() if v["duration_s"] in (0.5, 1.0)
            and v["prompt"] in ("rain on a roof", "a drip")}
    assert len(keys) == 4
    assert_same_takes(local / "cache", tmp_path / "cache", keys)
    for rel in ("small/mix.wav", "small/stems/rain.wav", "small/stems/drip.wav"):
        assert digest(tmp_path / "out" / rel) == digest(local / "out" / rel), rel
    m = json.loads((tmp_path / "out/small/manifest.json").read_text())
    where = [t["generator"] for e in m["elements"] for t in e["takes"]]
    assert len(where) == 4 and all(w["host"] == socket.gethostname() for w in where)


def test_sfx_through_the_object_store_equals_local_and_a_second_run_generates_nothing(
        cluster: None, tiny_model: Path, files: dict[str, Path], local: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from soundscape.takes.cluster import job

    monkeypatch.setattr(job, "sees_probe", lambda path, name: False)  # as on separate disks
    args = ["sfx", str(files["sfx"]), "--model", str(tiny_model), "--cache-dir",
            str(tmp_path / "cache"), "--cluster", "ray", "--actors", "2"]
    code, text = cli(*args, "--out", str(tmp_path / "a"))
    assert code == 0, text
    assert "come back through Ray's object store" in text
    assert "wrote 4 variations (4 generated)" in text
    m = json.loads((tmp_path / "a/kit/manifest.json").read_text())
    assert_same_takes(local / "cache", tmp_path / "cache", {v["key"] for v in m["variations"]})
    for v in m["variations"]:
        rel = Path("kit") / v["file"]
        assert digest(tmp_path / "a" / rel) == digest(local / "out" / rel), rel
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*")}
    code, text = cli(*args, "--out", str(tmp_path / "b"))
    assert code == 0, text
    assert "wrote 4 variations (0 generated)" in text and "cluster:" not in text
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*")} == before


def test_actor_killed_mid_job(cluster: None, tiny_model: Path, files: dict[str, Path],
                              local: Path, tmp_path: Path) -> None:
    from soundscape.pipelines.render import render
    from soundscape.takes.cluster import ClusterSpec
    from soundscape.takes.cluster.job import current_pools

    killed: list[int] = []
    lines: list[str] = []
    first = threading.Event()
    stop = threading.Event()

    bar: list[tuple[str, int, int]] = []

    def progress(label: str, step: int, total: int) -> None:
        bar.append((label, step, total))
        if label.startswith("takes on the cluster") and step >= 1:
            first.set()

    def killer() -> None:  # once a take is stored, SIGKILL an actor in the middle of a batch
        first.wait()
        while not stop.is_set() and not killed:
            busy = [pid for pool in current_pools() for pid, b in pool.pids() if b]
            if busy:
                # at once: a tiny model's take is stored within milliseconds, and an actor
                # killed after storing its batch leaves nothing to go to another (rightly)
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        [r] = render(files["scene"], model=str(tiny_model), cache_dir=tmp_path / "cache",
                     out=tmp_path / "out", max_batch=1, log=lines.append, progress=progress,
                     cluster=ClusterSpec("ray", actors=2))
    finally:
        stop.set()
        first.set()
        thread.join()
    assert killed, "no actor was busy to kill"
    assert any("died" in ln and "go to another" in ln for ln in lines), lines
    # one job did it all: the retried takes were not left for the render to notice missing
    assert [ln for ln in lines if "take(s) in" in ln] == [
        "cluster: 4 take(s) in 4 batch(es) on 2 actor(s) (one CPU each)"]
    assert r.generated == 4
    # one bar over the job: takes done of the total, actors alive, takes per minute
    job = [(label, step, total) for label, step, total in bar
           if label.startswith("takes on the cluster")]  # the mix has its own bar
    assert {t for _, _, t in job} == {4} and job[-1][1] == 4
    assert all(re.fullmatch(r"takes on the cluster \([012] actors alive, [\d.]+ takes/min\)",
                            label) for label, _, _ in job), job
    assert_same_takes(local / "cache", tmp_path / "cache",
                      {t.key for e in r.elements for t in e.takes})
    assert digest(r.mix) == digest(local / "out/small/mix.wav")


def test_without_ray_installed_cluster_is_one_error_line(tiny_model: Path, files: dict[str, Path],
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    for cmd, src in (("render", files["scene"]), ("sfx", files["sfx"])):
        code, text = cli(cmd, str(src), "--model", str(tiny_model), "--out",
                         str(tmp_path / "out"), "--cluster", "local")
        assert code == 1
        assert text.splitlines() == [
            "Error: --cluster needs Ray, which is not installed; install the extra: pip install "
            "'soundscape[cluster]' (from a checkout: uv sync --extra cluster)"]
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("how", ["ray://", "RAY_ADDRESS"])
def test_unreachable_cluster_is_one_error_line_in_30_s(how: str, tiny_model: Path,
                                                       files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    port = _closed_port()
    env = env_without_pytest()
    if how == "RAY_ADDRESS":
        env["RAY_ADDRESS"], target = f"127.0.0.1:{port}", "ray"
    else:
        target = f"ray://127.0.0.1:{port}"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "soundscape", "sfx", str(files["sfx"]), "--model",
                        str(tiny_model), "--out", str(tmp_path / "o"), "--cache-dir",
                        str(tmp_path / "c"), "--cluster", target], capture_output=True,
                       text=True, env=env, timeout=60)
    assert time.monotonic() - t0 < 30
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"Error: --cluster {target}: no Ray cluster answers at 127.0.0.1:{port} (Connection "
        f"refused); check the address and that the cluster runs ('ray status' on its head "
        f"node), or use --cluster local"]
    assert not list((tmp_path / "c").rglob("*.json"))


def test_a_take_that_cannot_be_stored_is_one_error_line_and_the_rest_finish(
        cluster: None, tiny_model: Path, files: dict[str, Path], local: Path,
        tmp_path: Path) -> None:
    ref = takes(local / "cache")
    m = json.loads((local / "out/kit/manifest.json").read_text())
    keys = [v["key"] for v in m["variations"]]
    bad = keys[1]
    # A folder where the worker's write of this one take's audio file must go
    shard = tmp_path / "cache/takes" / bad[:2]
    (shard / ref[bad]["audio_file"]).mkdir(parents=True)
    (shard / ref[bad]["audio_file"] / "x").write_text("")
    code, text = cli("sfx", str(files["sfx"]), "--model", str(tiny_model), "--cache-dir",
                     str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--cluster", "ray",
                     "--actors", "2")
    assert code == 1
    errors = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2, text
    assert errors[0].startswith(f"Error: take {bad[:12]} ('{m['variations'][1]['prompt']}', "
                                f"seed {m['variations'][1]['seed']}) failed on "
                                f"{socket.gethostname()}: ")
    assert "Is a directory" in errors[0]
    assert errors[1] == "Error: 1 of 4 take(s) failed; the others are cached"
    assert_same_takes(local / "cache", tmp_path / "cache", set(keys) - {bad})
    assert bad not in takes(tmp_path / "cache")


@pytest.mark.parametrize(("resources", "device", "expected"), [
    ({"CPU": 32.0, "GPU": 4.0}, "auto", (4, True)),  # one actor per GPU, each holding one
    ({"CPU": 32.0, "GPU": 4.0}, "cpu", (31, False)),  # --device cpu: CPU actors
    ({"CPU": 8.0}, "auto", (7, False)),  # no GPUs: one per CPU but one
    ({"CPU": 1.0}, "auto", (1, False)),
])
def test_default_actors(resources: dict[str, float], device: str,
                        expected: tuple[int, bool]) -> None:
    from soundscape.takes.cluster.job import default_actors

    class Conn:
        def resources(self) -> dict[str, float]:
            return resources

    assert default_actors(Conn(), device) == expected  # type: ignore[arg-type]
