"""Write a chosen seed back into a scene file, keeping its comments and layout (ruamel.yaml)."""

from __future__ import annotations

import io
from pathlib import Path

from ..audio_io import atomic_write_text
from ..errors import SceneError


def keep_seed(scene_path: str | Path, element: str, seed: int) -> None:
    from ruamel.yaml import YAML

    path = Path(scene_path)
    yaml = YAML()  # round-trip mode: comments, order and quoting survive
    yaml.preserve_quotes = True
    data = yaml.load(path.read_text(encoding="utf-8"))
    try:
        node = data["elements"][element]
    except (KeyError, TypeError):
        raise SceneError(f"{path}: no element '{element}' to keep a seed for") from None
    node["seed"] = seed
    buf = io.StringIO()
    yaml.dump(data, buf)
    atomic_write_text(path, buf.getvalue())
