"""Review 7: an edit's one-pass sum update (``sumcache.Update``) where the tests before did not
look: a render run by a script inside a ``multiprocessing.Pool`` worker (a daemonic process,
which may not start children of its own)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from soundscape.audio_io import read_audio
from soundscape.dsp.meter import Meter
from tests.test_iterate_cache import SCENE, TOLERANCE, write_scene


def _edit_in_worker(root: str) -> tuple[str, float, float]:
    """In a pool worker: render, edit the bed, render again (a sum on disk, as a long scene's
    is); the mix of the edit and its loudness and true peak, or the error's line."""
    import soundscape.dsp.bus as bus_module
    from soundscape.pipelines.render import render

    bus_module.IN_MEMORY_BYTES = 1024  # every sum on disk: the second measuring process
    scene = Path(root) / "it.yaml"
    render(scene, out=Path(root) / "o", jobs=1)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB"))
    try:
        [res] = render(scene, out=Path(root) / "o", jobs=1)
    except BaseException as e:  # noqa: BLE001  (reported to the test)
        return f"{type(e).__name__}: {e}", 0.0, 0.0
    return str(res.mix), res.mix_lufs, res.mix_true_peak_dbtp


@pytest.mark.skipif(not hasattr(mp, "get_context"), reason="multiprocessing")
def test_an_edit_renders_inside_a_pool_worker(tmp_path: Path) -> None:
    """A daemonic process cannot start the second measuring process: the edit is measured in
    the render's own process instead, and equals a fresh render."""
    from soundscape.pipelines.render import render

    write_scene(tmp_path, 48000, 2)
    with mp.get_context("fork").Pool(1) as pool:
        mix, lufs, peak = pool.apply(_edit_in_worker, (str(tmp_path),))
    assert Path(mix).is_file(), mix
    [fresh] = render(tmp_path / "it.yaml", out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(read_audio(Path(mix))[0] - read_audio(fresh.mix)[0]).max()) \
        <= TOLERANCE[24]
    assert lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    assert peak == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)


FX = "master: {loudness: -20 LUFS, effects: [{lowpass: {cutoff: 5 kHz}}]}"
_MEASURED: list[str] = []  # what an edit's pass measured of the sum


class _Counted(Meter):
    """A meter the sum cache makes (at module level: a measuring process sends it back)."""

    def add(self, block: np.ndarray) -> None:
        _MEASURED.append("loudness")
        super().add(block)


@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "file"])
def test_an_edit_with_master_effects_does_not_measure_the_sum_it_cannot_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_disk: bool) -> None:
    """The master measures its effects' output, never the dry sum: an edit's pass then starts
    no measuring process and reads no meter (on a sum on disk the two processes measured the
    whole sum for nothing), and the mix still equals a fresh render."""
    import soundscape.dsp.bus as bus_module
    from soundscape.outputs import sumcache
    from soundscape.pipelines.render import render

    if on_disk:
        monkeypatch.setattr(bus_module, "IN_MEMORY_BYTES", 1024)
    measured = _MEASURED
    measured.clear()
    real_second = sumcache._SecondProcess.__init__
    real_peak = sumcache.sum_true_peak_db

    def second(self: object, *a: object, **k: object) -> None:
        measured.append("processes")
        real_second(self, *a, **k)  # type: ignore[arg-type]


    def peak(*a: Any, **k: Any) -> float:
        measured.append("true peak")
        return real_peak(*a, **k)

    scene = write_scene(tmp_path, 48000, 2)
    scene.write_text(scene.read_text().replace("master: {loudness: -20 LUFS}", FX))
    render(scene, out=tmp_path / "o", jobs=1)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-12 dB")
                     .replace("master: {loudness: -20 LUFS}", FX))
    updates: list[int] = []
    real_update = sumcache.Update.__init__

    def update(self: object, *a: object, **k: object) -> None:
        updates.append(1)
        real_update(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(sumcache.Update, "__init__", update)
    monkeypatch.setattr(sumcache._SecondProcess, "__init__", second)
    monkeypatch.setattr(sumcache, "Meter", _Counted)
    monkeypatch.setattr(sumcache, "sum_true_peak_db", peak)
    [res] = render(scene, out=tmp_path / "o", jobs=1)
    assert updates == [1]  # the one-pass edit
    assert measured == []
    monkeypatch.undo()
    [fresh] = render(scene, out=tmp_path / "fresh", jobs=1)
    assert float(np.abs(read_audio(res.mix)[0] - read_audio(fresh.mix)[0]).max()) \
        <= TOLERANCE[24]
    assert res.mix_lufs == pytest.approx(fresh.mix_lufs, abs=1e-3)
    assert res.mix_true_peak_dbtp == pytest.approx(fresh.mix_true_peak_dbtp, abs=1e-3)


def _render_with_jobs_in_worker(root: str) -> tuple[str, float]:
    """In a pool worker: a render asking for two stem processes; its mix, or the error."""
    from soundscape.pipelines.render import render

    try:
        [res] = render(Path(root) / "it.yaml", out=Path(root) / "o", jobs=2)
    except BaseException as e:  # noqa: BLE001  (reported to the test)
        return f"{type(e).__name__}: {e}", 0.0
    return str(res.mix), res.mix_lufs


def test_a_render_with_jobs_inside_a_pool_worker_uses_one_process(tmp_path: Path) -> None:
    """--jobs 2 where no process may be started (a daemonic Pool worker) renders in the one
    process it has, to the same mix as a render with one job."""
    from soundscape.pipelines.render import render

    write_scene(tmp_path, 48000, 2)
    with mp.get_context("fork").Pool(1) as pool:
        mix, lufs = pool.apply(_render_with_jobs_in_worker, (str(tmp_path),))
    assert Path(mix).is_file(), mix
    [one] = render(tmp_path / "it.yaml", out=tmp_path / "one", jobs=1)
    np.testing.assert_array_equal(read_audio(Path(mix))[0], read_audio(one.mix)[0])
    assert lufs == pytest.approx(one.mix_lufs, abs=1e-9)
