"""Servers, MCP: the service layer as tools and resources for agents (official ``mcp`` SDK 2.x).

Input: MCP requests over stdio or streamable HTTP. Output: structured results (the manifest as
written) with resource links to the mix, stems, page and manifest (``soundscape://files/<path
under the root>``), progress notifications while a job runs, and, on failure, a ``ToolError``
carrying the message the CLI prints after ``Error:`` (the SDK shows the client "Error executing
tool <name>: <message>"; any other exception would reach it as that prefix alone).
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import AudioContent, CallToolResult, ContentBlock, ResourceLink, TextContent

from .. import __version__
from ..errors import SoundscapeError
from .service import Service

URI = "soundscape://files/"
PREVIEW_S = 10.0  # an inline preview: the mix's first seconds, mono, 16 kHz, 16-bit WAV
PREVIEW_HZ = 16000
MAX_RESOURCE_BYTES = 256 << 20  # bigger files: GET /files/<path> of ``soundscape serve``
SCHEMA_URI = "soundscape://schema/scene.json"
INSTRUCTIONS = """\
soundscape composes layered soundscapes from YAML scenes. Read the scene JSON Schema resource
(soundscape://schema/scene.json) to write a scene; validate_scene it, plan_scene to see the
timeline, render_scene to generate and mix (only what changed is redone), then read the
loudness figures in the manifest and adjust volumes. A scene is a path under the server's
root or the YAML text itself. audition_takes + keep_take choose a take of one element."""


def error_message(e: BaseException) -> str:
    """The message the CLI prints after ``Error: `` for this failure."""
    if isinstance(e, SoundscapeError):
        text = str(e)
    elif isinstance(e, MemoryError):
        text = "out of memory; shorten the scene, use fewer or shorter elements, or --jobs 1"
    elif isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        text = f"{e.strerror or e}{where}; check the path, its permissions and free disk space"
    else:
        first = str(e).splitlines()[0] if str(e) else ""
        text = (f"unexpected failure: {type(e).__name__}: {first} (a bug: please report it with "
                f"the output of SOUNDSCAPE_DEBUG=1)")
    return text


def error_lines(e: BaseException) -> str:
    """The lines the CLI prints for this failure (``Error: ...``)."""
    return "\n".join(f"Error: {line}" for line in error_message(e).splitlines())


def _link(path: str, description: str) -> ResourceLink:
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return ResourceLink(uri=URI + path, name=path.rsplit("/", 1)[-1], description=description,
                        mime_type=mime)


def _result(data: Any, links: list[ResourceLink]) -> CallToolResult:
    content: list[ContentBlock] = [TextContent(text=json.dumps(data, indent=1))]
    content += links
    return CallToolResult(content=content, structured_content=data)


def _render_links(r: dict[str, Any]) -> list[ResourceLink]:
    links = [_link(r["manifest_file"], "the render's manifest (JSON)"),
             _link(r["mix"], "the mastered mix")]
    links += [_link(p, f"stem of {name}") for name, p in r["stems"].items()]
    if r.get("page"):
        links.append(_link(r["page"], "the audition page (HTML)"))
    return links


def preview(path: Path) -> AudioContent:
    """The first ``PREVIEW_S`` seconds of an audio file as a small mono WAV to inline."""
    import base64
    import io

    import numpy as np
    from pedalboard.io import AudioFile

    with AudioFile(str(path)).resampled_to(PREVIEW_HZ) as f:
        audio = f.read(min(f.frames, int(PREVIEW_S * PREVIEW_HZ)))
    mono = np.clip(audio.mean(axis=0, keepdims=True), -1, 1).astype(np.float32)
    buf = io.BytesIO()
    with AudioFile(buf, "w", PREVIEW_HZ, 1, format="wav", bit_depth=16) as out:
        out.write(mono)
    return AudioContent(data=base64.b64encode(buf.getvalue()).decode(), mime_type="audio/wav")


def build(service: Service) -> MCPServer:
    """An ``MCPServer`` whose tools and resources call ``service``."""
    preview_of = preview
    mcp: MCPServer = MCPServer("soundscape", version=__version__, instructions=INSTRUCTIONS)

    async def run(fn: Callable[..., Any], *args: Any, ctx: Context | None = None,
                  **kwargs: Any) -> Any:
        """``fn`` in a worker thread; its progress goes to the client as notifications and a
        cancelled request cancels the job (as Ctrl-C would)."""
        cancel = threading.Event()
        last = [0.0]

        def events(ev: dict[str, Any]) -> None:
            if ctx is None or ev["type"] != "progress":
                return
            now = time.monotonic()
            if now - last[0] < 0.2 and ev["step"] < ev["total"]:
                return
            last[0] = now
            anyio.from_thread.run(ctx.report_progress, float(ev["step"]), float(ev["total"]),
                                  ev["label"])

        if "events" in kwargs:
            kwargs["events"] = events
            kwargs["cancel"] = cancel
        try:
            # abandoned on cancel: the job sees its cancel event at its next step and stops
            # there, as a Ctrl-C would, while the request ends now
            return await anyio.to_thread.run_sync(
                lambda: service.call(fn, *args, **kwargs), abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            cancel.set()
            raise
        except Exception as e:
            if os.environ.get("SOUNDSCAPE_DEBUG") and not isinstance(e, SoundscapeError):
                raise
            raise ToolError(error_message(e)) from None

    @mcp.tool()
    async def validate_scene(scene: str) -> CallToolResult:
        """Check a scene (a .yaml path under the server's root, or YAML text) and all its
        variants; errors name the file, line and field."""
        return _result(await run(service.validate, scene), [])

    @mcp.tool()
    async def plan_scene(scene: str, variant: str | None = None) -> CallToolResult:
        """The arrangement as a timeline (when each element plays); generates nothing."""
        return _result(await run(service.plan, scene, variant), [])

    @mcp.tool()
    async def render_scene(scene: str, ctx: Context, variant: str | None = None,
                           all_variants: bool = False, only: list[str] | None = None,
                           force: bool = False, preview: bool = False) -> CallToolResult:
        """Generate missing takes, mix, master and write mix, stems, manifest and page. Only
        what changed is redone. Returns each render's manifest (loudness per stem and of the
        mix) with links to its files; preview: also the first 10 s of each mix inline (mono,
        16 kHz)."""
        data = await run(service.render, scene, variant, all_variants=all_variants, only=only,
                         force=force, events=None, ctx=ctx)
        result = _result(data, [x for r in data["renders"] for x in _render_links(r)])
        if preview:
            for r in data["renders"]:
                clip = await run(lambda p: preview_of(service.path(p)), r["mix"])
                result.content.append(clip)
        return result

    @mcp.tool()
    async def audition_takes(scene: str, element: str, ctx: Context, n: int = 4,
                             variant: str | None = None) -> CallToolResult:
        """Generate n takes of one element with distinct seeds to choose from (keep_take)."""
        data = await run(service.audition, scene, element, n, variant, events=None, ctx=ctx)
        return _result(data, [_link(t["file"], f"take seed {t['seed']}") for t in data["takes"]]
                       + [_link(data["page"], "the takes' page (HTML)")])

    @mcp.tool()
    async def keep_take(scene: str, element: str, seed: int,
                        variant: str | None = None) -> CallToolResult:
        """Write a take's seed into the scene file; only that line of the file changes."""
        return _result(await run(service.keep, scene, element, seed, variant), [])

    @mcp.tool()
    async def render_sfx(sfx_list: str, ctx: Context) -> CallToolResult:
        """Render a game's SFX list (a path under the root): trimmed, loudness-normalised
        variations, a manifest and catalog.csv."""
        data = await run(service.sfx, sfx_list, events=None, ctx=ctx)
        return _result(data, [_link(data["manifest_file"], "the SFX manifest (JSON)")])

    @mcp.tool()
    async def list_renders() -> CallToolResult:
        """Every render under the server's output folder."""
        return _result({"renders": await run(service.list_renders)}, [])

    @mcp.tool()
    async def read_manifest(path: str) -> CallToolResult:
        """A render's manifest: its folder or manifest.json, under the root."""
        return _result(await run(service.read_manifest, path), [])

    @mcp.resource(SCHEMA_URI, name="scene-schema", mime_type="application/schema+json",
                  description="JSON Schema of the scene format: write scenes that validate.")
    def scene_schema() -> str:
        from ..scene import json_schema

        return json.dumps(json_schema(), indent=1)

    @mcp.resource(URI + "{+path}", name="file", mime_type="application/octet-stream",
                  description="A file under the server's root (renders, takes, scenes).")
    def read_file(path: str) -> str | bytes:
        try:
            p = service.path(path)
        except SoundscapeError as e:
            raise ResourceError(str(e)) from None
        if not p.is_file():
            raise ResourceError(f"{path}: not a file")
        if p.stat().st_size > MAX_RESOURCE_BYTES:
            raise ResourceError(f"{path}: {p.stat().st_size / 2**20:.0f} MiB is too big to "
                                f"send inline; fetch it from soundscape serve's /files/{path}")
        if p.suffix in (".json", ".yaml", ".yml", ".html", ".csv", ".txt"):
            return p.read_text(encoding="utf-8")
        return p.read_bytes()

    return mcp
