"""Kills and concurrency: kill -9 at any moment leaves nothing half-written and nothing running;
two renders at once both finish and never generate one take twice (issue 14, item 5)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import atomic_path, read_audio, remove_stale_temps
from soundscape.mixer.workers import SHM_DIR, SHM_PREFIX, remove_stale_buffers
from soundscape.pipelines import render as render_module
from soundscape.pipelines.render import render
from tests.conftest import wav

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG, /dev/shm")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def long_scene(tmp_path: Path, elements: int = 4) -> Path:
    rng = np.random.default_rng(4)
    wav(tmp_path / "n.wav", rng.normal(0, 0.1, 48000 * 4), 48000)
    lines = ["name: long", "duration: 2:00", "elements:"]
    lines += [f"  e{i}: {{file: n.wav, loop: true, effects: [reverb]}}" for i in range(elements)]
    scene = tmp_path / "long.yaml"
    scene.write_text("\n".join(lines) + "\n")
    return scene


def children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def segments(pid: int) -> list[str]:
    return [p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}{pid}-*")]


@linux_only
def test_a_killed_but_unreaped_process_counts_as_dead() -> None:
    from soundscape.locks import pid_alive

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert pid_alive(p.pid)
    os.kill(p.pid, signal.SIGKILL)  # not waited for: a zombie, as orphans are until reaped
    deadline = time.time() + 5
    while time.time() < deadline and alive(p.pid):
        time.sleep(0.01)
    assert not pid_alive(p.pid)
    p.wait()


def test_stale_temps_of_dead_writers_go_and_live_ones_stay(tmp_path: Path) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".mix.{dead_pid()}-abc_123.tmp.wav"
        other = tmp_path / f".mix.{live.pid}-def456.tmp.wav"
        old = tmp_path / f".x.{live.pid}-ghi789.tmp.flac"
        mine = tmp_path / f".y.{os.getpid()}-jkl000.tmp.wav"  # our pid, not being written
        keep = tmp_path / ".hidden.tmp"  # not a name atomic_path makes
        for p in (dead, other, old, mine, keep):
            p.write_bytes(b"partial")
        os.utime(old, (time.time() - 25 * 3600,) * 2)
        with atomic_path(tmp_path / "z.wav") as writing:
            writing.write_bytes(b"being written")
            removed = remove_stale_temps(tmp_path)
            assert writing.exists()
        assert sorted(p.name for p in removed) == sorted(p.name for p in (dead, old, mine))
        assert other.exists() and keep.exists() and (tmp_path / "z.wav").read_bytes() == \
            b"being written"
        assert re.fullmatch(rf"\.z\.{os.getpid()}-\w+\.tmp\.wav", writing.name)
    finally:
        live.kill()
        live.wait()


def test_render_removes_temps_left_by_killed_renders(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav", np.full(4800, 0.25), 48000)
    scene = tmp_path / "s.yaml"
    scene.write_text("name: s\nduration: 1 s\nelements:\n  a: {file: a.wav}\n"
                     "master: {loudness: off}\n")
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    pid = dead_pid()
    left = [out / "s" / f".mix.{pid}-a1b2c3d4.tmp.wav",
            out / "s/stems" / f".a.{pid}-e5f6g7h8.tmp.wav"]
    for p in left:
        p.write_bytes(b"RIFF")
    [res] = render(scene, out=out, jobs=1)
    assert res.up_to_date  # nothing to write, but the leftovers still go
    assert not any(p.exists() for p in left)


@linux_only
def test_stale_buffers_of_dead_renders_are_unlinked() -> None:
    dead = shared_memory.SharedMemory(name=f"{SHM_PREFIX}{dead_pid()}-0123abcd", create=True,
                                      size=64)
    ours = shared_memory.SharedMemory(name=f"{SHM_PREFIX}{os.getpid()}-4567ef01", create=True,
                                      size=64)
    try:
        removed = remove_stale_buffers()
        assert dead.name in removed and ours.name not in removed
        assert not (SHM_DIR / dead.name).exists() and (SHM_DIR / ours.name).exists()
    finally:
        for shm in (dead, ours):
            shm.close()
            if (SHM_DIR / shm.name).exists():
                shm.unlink()
            else:  # already gone: keep the resource tracker from warning about it
                from multiprocessing import resource_tracker

                resource_tracker.unregister(f"/{shm.name}", "shared_memory")


@linux_only
@pytest.mark.parametrize("group", [False, True], ids=["render", "render-and-helpers"])
def test_killed_parallel_mix_takes_its_workers_and_memory_and_resumes(tmp_path: Path,
                                                                      group: bool) -> None:
    """kill -9 of the render alone: its workers die with it and its shared memory goes at once
    (the resource tracker unlinks it). Of its whole process group, tracker included: the
    segments stay until the next render, which unlinks them."""
    scene = long_scene(tmp_path)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "soundscape", "render", str(scene), "--out", str(out),
           "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and not (workers and segments(proc.pid)
                                          and list(out.rglob(".*.tmp.wav"))):
        workers = {c for c in children(proc.pid) if "soundscape" in
                   Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")}
        time.sleep(0.05)
    assert workers and segments(proc.pid), "the render never went parallel"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and (any(map(alive, workers)) or
                                      (segments(proc.pid) and not group)):
        time.sleep(0.05)
    assert not any(map(alive, workers))
    assert bool(segments(proc.pid)) == group
    assert not (out / "long/mix.wav").exists()
    for stem in (out / "long/stems").glob("e*.wav"):  # whatever was finished is whole
        audio, sr = read_audio(stem)
        assert audio.shape == (2, 120 * sr)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not segments(proc.pid)
    assert not list(out.rglob(".*tmp*"))
    m = json.loads((out / "long/manifest.json").read_text())
    assert len(m["elements"]) == 4
    mix, sr = read_audio(out / "long/mix.wav")
    assert mix.shape == (2, 120 * sr) and np.isfinite(mix).all()


def test_interrupted_rewrite_never_leaves_a_manifest_naming_replaced_stems(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    wav(tmp_path / "a.wav", rng.normal(0, 0.1, 9600), 48000)
    wav(tmp_path / "b.wav", rng.normal(0, 0.1, 9600), 48000)
    scene = tmp_path / "s.yaml"
    v1 = "name: s\nduration: 1 s\nelements:\n  a: {file: a.wav}\n  b: {file: b.wav}\n" \
         "master: {loudness: off}\n"
    scene.write_text(v1)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    first, _ = read_audio(out / "s/stems/a.wav")
    scene.write_text(v1.replace("{file: a.wav}", "{file: a.wav, volume: -12 dB}"))

    def killed(*args: object, **kwargs: object) -> None:  # dies after the stems are written
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(render_module, "master_bus", killed)
        with pytest.raises(KeyboardInterrupt):
            render(scene, out=out, jobs=1)
    quieter, _ = read_audio(out / "s/stems/a.wav")
    assert np.max(np.abs(quieter)) < 0.3 * np.max(np.abs(first))  # the new stem is on disk
    scene.write_text(v1)  # back to the first version: its stem must be rendered again
    [res] = render(scene, out=out, jobs=1)
    assert {e.element: e.rendered for e in res.elements} == {"a": True, "b": False}
    again, _ = read_audio(out / "s/stems/a.wav")
    np.testing.assert_array_equal(again, first)


def test_two_renders_into_one_folder_generate_each_take_once(tmp_path: Path,
                                                             tiny_model: Path) -> None:
    scene = tmp_path / "small.yaml"
    scene.write_text("""\
name: small
duration: 4 s
seed: 5
defaults: {duration: 0.5 s}
elements:
  rain: {prompt: rain on a roof, loop: true, volume: -6 dB}
  drip: {prompt: a drip, variations: 2, scatter: {interval: [0.6 s, 1 s]}}
  hum: {prompt: a low hum, at: [1 s, 2 s]}
master: {loudness: -20 LUFS}
""")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "soundscape", "render", str(scene), "--model", str(tiny_model),
           "--out", str(out), "--max-batch", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    generated = 0
    for p in procs:
        stdout, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err
        generated += sum(int(n) for n in re.findall(r"generating (\d+) take\(s\)", err))
    m = json.loads((out / "small/manifest.json").read_text())
    keys = {t["key"] for e in m["elements"] for t in e["takes"]}
    assert len(keys) == 4 and generated == 4  # each take generated by exactly one render
    cache = Path(os.environ["SOUNDSCAPE_CACHE_DIR"])
    assert len(list((cache / "takes").rglob("*.json"))) == 4  # sidecars, not cost.json
    assert not list(tmp_path.rglob(".*.tmp*"))
    for e in m["elements"]:
        stem = out / "small" / e["stem"]
        assert stem.stat().st_size == e["bytes"]
        audio, sr = read_audio(stem)
        assert audio.shape == (2, 4 * sr) and np.isfinite(audio).all()
    mix, sr = read_audio(out / "small/mix.wav")
    assert mix.shape == (2, 4 * sr) and np.isfinite(mix).all()
    [solo] = render(scene, out=tmp_path / "solo", model=str(tiny_model))  # all cached now
    assert solo.generated == 0
    np.testing.assert_array_equal(read_audio(solo.mix)[0], mix)
