"""Where soundscape keeps things between runs: the take cache's default folder.

Input: the environment (``SOUNDSCAPE_CACHE_DIR``) and the platform's conventions. Output: paths.
At the bottom of the package, so the engines (their measured costs) and the take store share it.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``SOUNDSCAPE_CACHE_DIR``, else the platform's user cache folder for soundscape."""
    env = os.environ.get("SOUNDSCAPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("soundscape"))
