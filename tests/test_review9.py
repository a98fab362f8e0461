"""Review of the edit path's page-cache dropping (``audio_io.forget_cached``,
``sumcache._Replaced``) and of the meter's pedalboard K-weighting, on inputs their own tests
did not try."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from soundscape.outputs import sumcache
from soundscape.pipelines.render import render
from tests.test_iterate_cache import SCENE, write_scene


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise")
def test_an_edit_never_drops_the_pages_of_the_stem_it_just_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tone plays from 1 s to 2 s of a 4 s scene: its new stem is silence after that, so the
    edit reads the rest of the earlier file only once the new one has been renamed onto its
    name. The pages dropped must still be the earlier file's (the one being read), never those
    of the file the render has just written and reads again (tags, overview, next edit)."""
    monkeypatch.setattr(sumcache._Replaced, "STEP", 4096)  # a 4 s stem drops as a long one
    monkeypatch.setattr(sumcache._Replaced, "MARGIN", 0)
    scene = write_scene(tmp_path, 48000, 2)
    out = tmp_path / "o"
    render(scene, out=out, jobs=1)
    stem = out / "it" / "stems" / "tone.wav"
    old_inode = stem.stat().st_ino
    dropped: list[int] = []  # the inode of every file whose pages were dropped
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        dropped.append(os.fstat(fd).st_ino)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    scene.write_text(SCENE.format(sr=48000, channels=2, bed="-6 dB")
                     .replace("volume: -6 dB, effects", "volume: -9 dB, effects"))
    render(scene, out=out, jobs=1)
    new_inode = stem.stat().st_ino
    assert new_inode != old_inode  # replaced by a rename
    assert dropped.count(old_inode) >= 2  # dropped behind the reading
    assert new_inode not in dropped
