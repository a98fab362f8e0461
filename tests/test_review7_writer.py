"""Review 7: a WAV written through the 1 MiB buffer (``AtomicAudioWriter``) on a disk that fills
up. The buffer still holds what it failed to write when the encoder closes; that close must not
turn the full disk into pedalboard's ``SystemError`` (which the CLI reports as a bug)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import soundscape.audio_io as audio_io
from tests.conftest import run_cli
from tests.test_iterate_cache import write_scene


@pytest.fixture
def disk_fills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The WAV encoder's file takes ``limit[0]`` bytes, then every write fails with ENOSPC,
    as a full disk does (a rewrite of bytes already there, the header, still succeeds)."""
    limit = [0]
    real = audio_io._Shifted.write

    def write(self: Any, data: Any) -> int:
        if self.pos + len(memoryview(data).cast("B")) > limit[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(real(self, data))

    monkeypatch.setattr(audio_io._Shifted, "write", write)
    return limit


@pytest.mark.parametrize("background", [False, True], ids=["direct", "background"])
@pytest.mark.parametrize("room,frames", [(3_000_000, 40 * 65536), (0, 1000)],
                         ids=["while-writing", "at-close"])
def test_a_full_disk_is_an_oserror_and_leaves_nothing(
        tmp_path: Path, disk_fills: list[int], background: bool, room: int,
        frames: int) -> None:
    disk_fills[0] = room
    target = tmp_path / "x.wav"
    with pytest.raises(OSError) as info, \
            audio_io.AtomicAudioWriter(target, 48000, 2, 24, background=background) as w:
        for start in range(0, frames, 65536):
            w.write(np.full((2, min(65536, frames - start)), 0.25, np.float32))
    assert info.type is OSError and info.value.errno == errno.ENOSPC, repr(info.value)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary left


def test_a_render_on_a_full_disk_is_one_error_line(tmp_path: Path,
                                                   disk_fills: list[int]) -> None:
    disk_fills[0] = 2_000_000
    scene = write_scene(tmp_path, 48000, 2)
    scene.write_text(scene.read_text().replace("duration: 4 s", "duration: 30 s"))
    code, output = run_cli("render", str(scene), "--out", str(tmp_path / "o"), "--jobs", "1")
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    assert "cannot write outputs: [Errno 28] No space left on device" in lines[0]
    assert "SystemError" not in output and "a bug" not in output
