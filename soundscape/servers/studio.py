"""Servers, live studio: scene files watched, re-rendered when saved, and their pages kept live.

Input: scene files under the root that a browser opened (or that ``serve`` was given). Output:
for each, a stream of messages to every open page: ``rendering``, then ``state`` (the page's data:
the manifest, the stems' overviews, and each element's volume, pan, mute, seed and auditioned
takes as the YAML now says) or ``error`` (the CLI's error lines, e.g. for a scene saved half-
written). A scene is re-rendered when its text changes, whoever changed it (an editor, a page's
control, ``takes --keep``); the render is incremental, so one moved volume rewrites one stem.
Renders of one scene run one at a time; a change during a render queues one more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from .mcp import error_lines
from .service import Service

POLL_S = 0.2


@dataclass
class Watch:
    """One scene file and the pages watching it."""

    path: Path
    rel: str
    variants: set[str | None] = field(default_factory=set)
    digest: str = ""
    version: int = 0
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    states: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    dirty: bool = False
    error: str | None = None  # the last render's error lines, if it failed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _digest(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError:
        return ""


class Studio:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.watches: dict[Path, Watch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, w: Watch) -> None:
        """Render ``w`` in the background (the task is held until it ends)."""
        task = asyncio.get_running_loop().create_task(self.render(w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, rel: str, variant: str | None = None) -> Watch:
        path = self.service.path(rel)
        w = self.watches.get(path)
        if w is None:
            w = self.watches[path] = Watch(path, self.service.rel(path))
        w.variants.add(variant)
        return w

    def publish(self, w: Watch, message: dict[str, Any]) -> None:
        for q in list(w.subscribers):
            q.put_nowait(message)

    async def render(self, w: Watch) -> None:
        """Render every watched variant of the scene, then tell the pages."""
        if w.lock.locked():
            w.dirty = True
            return
        async with w.lock:
            while True:
                w.dirty = False
                w.digest = _digest(w.path)
                w.version += 1
                self.publish(w, {"type": "rendering", "version": w.version})
                try:
                    for variant in sorted(w.variants, key=lambda v: v or ""):
                        state = await anyio.to_thread.run_sync(self._state, w, variant)
                        w.states[variant] = state
                        self.publish(w, state)
                    w.error = None
                except Exception as e:
                    w.error = error_lines(e)
                    self.publish(w, {"type": "error", "version": w.version, "error": w.error})
                if not w.dirty and _digest(w.path) == w.digest:
                    return

    async def ensure(self, w: Watch, variant: str | None) -> dict[str, Any] | None:
        """The state of a variant, rendered now if no render has made it yet (waiting for a
        render under way); None when the scene does not render (``w.error`` says why)."""
        while variant not in w.states:
            if w.lock.locked():
                async with w.lock:
                    pass
                continue
            await self.render(w)
            if variant not in w.states:
                return None
        return w.states[variant]

    def _state(self, w: Watch, variant: str | None) -> dict[str, Any]:
        from ..outputs.page import page_data

        s = self.service
        result = s.call(s.render, w.rel, variant)
        directory = s.path(result["renders"][0]["directory"])
        scene = s.call(s._load, w.rel, variant)
        takes_root = s.out / scene.name / "takes"
        elements = {}
        for name, e in scene.elements.items():
            seeds = sorted(int(p.stem.rsplit("seed", 1)[1])
                           for p in (takes_root / name).glob(f"{name}-seed*.wav")
                           if p.stem.rsplit("seed", 1)[1].isdigit())
            elements[name] = {"volume_db": None if e.volume == float("-inf") else e.volume,
                              "pan": e.pan, "mute": e.mute, "seed": scene.element_seed(name),
                              "takes": seeds, "prompt": e.prompt is not None}
        data = page_data(directory)
        stems = {}
        for rec in data["manifest"]["elements"]:
            if rec.get("stem"):
                stat = (directory / rec["stem"]).stat()
                stems[rec["element"]] = stat.st_mtime_ns
        return {"type": "state", "version": w.version, "variant": variant,
                "scene": w.rel, "directory": s.rel(directory), "data": data,
                "elements": elements, "stem_mtimes": stems,
                "up_to_date": result["renders"][0]["up_to_date"]}

    async def run(self) -> None:
        """Poll the watched scene files; a changed text re-renders (in the background)."""
        while True:
            await asyncio.sleep(POLL_S)
            for w in list(self.watches.values()):
                if w.digest and not w.lock.locked() and _digest(w.path) != w.digest:
                    self.spawn(w)

    async def subscribe(self, w: Watch) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        w.subscribers.add(q)
        for state in w.states.values():
            q.put_nowait(state)
        return q


def inject(page_html: str, base_href: str, boot: dict[str, Any], script: str) -> str:
    """A render's page made live: links resolve to its folder on the server, and the studio's
    script and controls are added."""
    boot_json = json.dumps(boot).replace("<", "\\u003c")
    head = f'<base href="{base_href}">\n'
    tail = (f'<script id="studio-boot" type="application/json">{boot_json}</script>\n'
            f"<script>\n{script}\n</script>\n")
    return page_html.replace("<head>", "<head>\n" + head, 1).replace("</body>", tail + "</body>")
