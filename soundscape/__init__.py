"""soundscape: layered soundscapes from YAML scenes, generated (AudioGen, Stable Audio Open), mixed.

Public API: ``load_scene``, ``render``, ``render_sfx``, ``__version__``. Importing this package
does not import torch or audiocraft.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_scene", "render", "render_sfx", "scene_from_dict"]


def __getattr__(name: str) -> Any:
    if name in ("load_scene", "scene_from_dict"):
        from . import scene

        return getattr(scene, name)
    if name == "render":
        from .pipelines.render import render

        return render
    if name == "render_sfx":
        from .pipelines.sfx import render_sfx

        return render_sfx
    raise AttributeError(name)
