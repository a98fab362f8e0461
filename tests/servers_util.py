"""Shared by the server tests: a live uvicorn server in a thread, and small scenes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import wav

TINY_SCENE = """\
# rendered with the tiny model
name: small
duration: 3 s
seed: 5
defaults: {duration: 1 s}
elements:
  rain: {prompt: rain on a roof, loop: {crossfade: 200 ms}, volume: -6 dB}
"""

BAD_SCENE = """\
name: bad
duration: 10 s
elements:
  rain:
    prompt: rain
    volume: -6 dbb
"""

# file elements: renders without a model, in well under a second
STUDIO_SCENE = """\
# The studio edits this file; these comments must survive.
name: live
duration: 4 s
sample_rate: 22050

elements:
  tone:   # a steady 440 Hz tone
    file: tone.wav
    loop: true
    volume: -12 dB    # moved by the page
    pan: 0

  hum:
    file: hum.wav
    loop: {crossfade: 100 ms}
    volume: -18 dB
"""


def studio_folder(root: Path) -> Path:
    """A root with scenes/live.yaml and its two recordings."""
    sr = 22050
    t = np.arange(2 * sr) / sr
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    wav(root / "scenes/tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr)
    wav(root / "scenes/hum.wav", 0.3 * np.sin(2 * np.pi * 60 * t), sr)
    scene = root / "scenes/live.yaml"
    scene.write_text(STUDIO_SCENE)
    return scene


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
