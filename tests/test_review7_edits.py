"""Review 7: an edit's one-pass sum update (``sumcache.Update``) where the tests before did not
look: a render run by a script inside a ``multiprocessing.Pool`` worker (a daemonic process,
which may not start children of its own)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import read_audio
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
