"""Scene stage, writing back: a chosen take's seed into the scene file, changing only its line.

Input: a scene file, an element (of the base scene or of a variant) and a seed. Output: the file
with that element's ``seed:`` set (``scene.edit``: one line changed or inserted, the rest of the
text as it was).
"""

from __future__ import annotations

from pathlib import Path

from .edit import KeyPath, edit_file, element_path


def keep_seed(scene_path: str | Path, element: str, seed: int,
              variant: str | None = None) -> KeyPath:
    """Write ``seed`` as ``element``'s seed: in ``variant``'s override when that variant declares
    the element, else in the base scene. Returns the key path written."""
    path = Path(scene_path)
    where = element_path(path.read_text(encoding="utf-8"), element, variant, "seed", str(path))
    edit_file(path, where, str(int(seed)), str(path))
    return where
