"""Scene stage, writing back: a chosen take's seed into the scene file, changing only its line.

Input: a scene file, an element (of the base scene or of a variant) and a seed. Output: the file
with that element's ``seed:`` set (``scene.edit``: one line changed or inserted, the rest of the
text as it was).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SoundscapeError
from ..locks import locked
from .edit import KeyPath, edit_file, element_path, read_text

MAX_SEED = 2**63 - 1  # as the scene format's seed: field


def keep_seed(scene_path: str | Path, element: str, seed: int,
              variant: str | None = None) -> KeyPath:
    """Write ``seed`` as ``element``'s seed: in ``variant``'s override when that variant declares
    the element, else in the base scene. Returns the key path written."""
    path = Path(scene_path)
    if not 0 <= seed <= MAX_SEED:
        raise SoundscapeError(f"seed {seed} is not a take's seed; give a whole number from 0 "
                              f"to {MAX_SEED}")
    where = element_path(read_text(path), element, variant, "seed", str(path))

    def loads(text: str) -> None:  # the base scene and every variant, as the file will be
        from .load import load_scene

        base = load_scene(path, text=text)
        for v in base.variants:
            load_scene(path, v, text=text)

    edit_file(path, where, str(int(seed)), str(path), check=loads)
    return where


@contextmanager
def edit_lock(out: str | Path, scene_name: str, *, create: bool = True) -> Iterator[None]:
    """Held while one scene file is read, edited and written: a lock file in the scene's output
    folder, shared by ``takes --keep`` and the studio (``serve``), so two edits both land.
    ``create=False`` (the CLI): no folder is made where none is, for no studio edits a scene
    it has neither rendered nor locked."""
    folder = Path(out) / scene_name
    if not create and not folder.is_dir():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".edit.lock"):
        yield
