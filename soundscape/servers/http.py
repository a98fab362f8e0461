"""Servers, HTTP: the service layer as a local web API, the MCP endpoint, files and the live studio.

Input: HTTP requests (Starlette under uvicorn). Output: JSON, server-sent events (a job's
progress; a studio page's updates), files under the root, and the studio pages. Routes:

    GET  /                          the scenes served and the renders, as links
    POST /api/validate | /api/plan  {"scene": path or YAML, "variant"}
    POST /api/jobs                  {"kind": "render"|"audition"|"sfx", ...}: 202 and the job
    GET  /api/jobs[/<id>]           jobs and their state
    GET  /api/jobs/<id>/events      server-sent events: progress, log, then done/error/cancelled
    DELETE /api/jobs/<id>           cancel (what a Ctrl-C leaves)
    POST /api/keep                  {"scene", "element", "seed", "variant"}
    POST /api/element               {"scene", "element", "variant", "volume_db", "pan", "mute"}
    GET  /api/renders | /api/manifest?path=
    GET  /files/<path>              a file under the root
    GET  /studio/<scene>[?variant=] the scene's live page; /api/studio/events?scene= its updates
    /mcp                            the MCP server (streamable HTTP)

Requests are bounded (``MAX_BODY_BYTES``); paths are confined to the root by the service. On a
loopback address only loopback Host headers are served (no DNS rebinding) and a POST from a page of
another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import SceneError, SoundscapeError
from .jobs import Jobs
from .mcp import build as build_mcp
from .mcp import error_lines
from .service import MAX_SCENE_BYTES, AccessError, Service
from .studio import Studio, inject

MAX_BODY_BYTES = MAX_SCENE_BYTES + (64 << 10)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BodyTooLarge(Exception):
    pass


class _Guard:
    """Refuses oversize bodies (declared or streamed), foreign Host headers on a loopback
    server, and cross-origin writes."""

    def __init__(self, app: ASGIApp, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") \
            else host[1:host.find("]")]
        if self.loopback and hostname not in LOOPBACK:
            await _plain(send, 421, f"Error: host {host!r} is not served here")
            return
        origin = headers.get("origin")
        if origin and scope["method"] not in ("GET", "HEAD", "OPTIONS") and \
                origin.split("://", 1)[-1] != host:
            await _plain(send, 403, f"Error: a request from {origin} is refused")
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _plain(send, 413, f"Error: the request body is over {MAX_BODY_BYTES} bytes")
            return
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except BodyTooLarge:
            await _plain(send, 413, f"Error: the request body is over {MAX_BODY_BYTES} bytes")


async def _plain(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _fail(e: BaseException) -> JSONResponse:
    if isinstance(e, BodyTooLarge):
        return JSONResponse({"error": f"Error: the request body is over {MAX_BODY_BYTES} bytes"},
                            status_code=413)
    if isinstance(e, AccessError):
        status = 404 if "no such file" in str(e) else 403
    elif isinstance(e, SceneError):
        status = 422
    elif isinstance(e, SoundscapeError):
        status = 400
    else:
        status = 500
    return JSONResponse({"error": error_lines(e)}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise SoundscapeError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise SoundscapeError("the request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str, required: bool = True) -> Any:
    v = data.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise SoundscapeError(f"'{key}' must be a non-empty string")
    return v


def _script() -> str:
    web = resources.files("soundscape.outputs").joinpath("web")
    return web.joinpath("studio.js").read_text(encoding="utf-8")


def build_app(service: Service, scenes: tuple[str, ...] = (), host: str = "127.0.0.1") \
        -> Starlette:
    """The ASGI app of ``soundscape serve``."""
    jobs = Jobs(error_lines)
    studio = Studio(service)
    mcp = build_mcp(service)
    mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", host=host)
    for s in scenes:
        service.path(s)  # a scene out of the root is refused at start

    async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(service.call, fn, *args, **kwargs)

    async def index(request: Request) -> Response:
        renders = await call(service.list_renders)
        items = "".join(f'<li><a href="/studio/{html.escape(s)}">{html.escape(s)}</a> '
                        f"(live studio)</li>" for s in scenes)
        for r in renders:
            label = f"{r['scene']}{' / ' + r['variant'] if r['variant'] else ''}"
            items += (f'<li><a href="/files/{html.escape(r["directory"])}/index.html">'
                      f"{html.escape(label)}</a> {r['mix_lufs']} LUFS</li>")
        return HTMLResponse(f"<!DOCTYPE html><meta charset=utf-8><title>soundscape</title>"
                            f"<h1>soundscape</h1><ul>{items}</ul>")

    async def validate(request: Request) -> Response:
        try:
            data = await _body(request)
            return JSONResponse(await call(service.validate, _str(data, "scene")))
        except Exception as e:
            return _fail(e)

    async def plan(request: Request) -> Response:
        try:
            data = await _body(request)
            return JSONResponse(await call(service.plan, _str(data, "scene"),
                                           _str(data, "variant", False)))
        except Exception as e:
            return _fail(e)

    async def start_job(request: Request) -> Response:
        try:
            data = await _body(request)
            kind = data.get("kind", "render")
            variant = _str(data, "variant", False)
            if kind == "render":
                scene = _str(data, "scene")
                service.scene_file(scene)  # refused now, not in the job
                only = data.get("only")
                fn: Any = lambda events, cancel: service.call(  # noqa: E731
                    service.render, scene, variant, all_variants=bool(data.get("all_variants")),
                    only=only, force=bool(data.get("force")), events=events, cancel=cancel)
            elif kind == "audition":
                scene, element = _str(data, "scene"), _str(data, "element")
                service.scene_file(scene)
                n = int(data.get("n", 4))
                fn = lambda events, cancel: service.call(  # noqa: E731
                    service.audition, scene, element, n, variant, events=events, cancel=cancel)
            elif kind == "sfx":
                lst = _str(data, "sfx_list")
                service.path(lst)
                fn = lambda events, cancel: service.call(  # noqa: E731
                    service.sfx, lst, events=events, cancel=cancel)
            else:
                raise SoundscapeError(f"kind {kind!r} is not render, audition or sfx")
        except Exception as e:
            return _fail(e)
        job = jobs.start(kind, {k: v for k, v in data.items() if k != "scene" or
                                len(str(v)) < 200}, fn)
        return JSONResponse({**job.summary(), "events_url": f"/api/jobs/{job.id}/events"},
                            status_code=202)

    def _job(request: Request) -> Any:
        job = jobs.get(request.path_params["job"])
        if job is None:
            raise SoundscapeError(f"no job {request.path_params['job']}")
        return job

    async def list_jobs(request: Request) -> Response:
        return JSONResponse([j.summary() for j in jobs.all()])

    async def get_job(request: Request) -> Response:
        try:
            return JSONResponse(_job(request).summary())
        except SoundscapeError as e:
            return JSONResponse({"error": error_lines(e)}, status_code=404)

    async def cancel_job(request: Request) -> Response:
        try:
            job = jobs.cancel(request.path_params["job"])
        except SoundscapeError as e:
            return JSONResponse({"error": error_lines(e)}, status_code=404)
        return JSONResponse(job.summary(), status_code=202)

    async def job_events(request: Request) -> Response:
        try:
            job = _job(request)
        except SoundscapeError as e:
            return JSONResponse({"error": error_lines(e)}, status_code=404)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            sent = 0
            while True:
                events = job.events[sent:]
                for ev in events:
                    yield {"event": ev["type"], "id": str(ev["seq"]), "data": json.dumps(ev)}
                sent += len(events)
                if job.state != "running" and sent >= len(job.events):
                    return
                await asyncio.sleep(0.05)

        return EventSourceResponse(stream(), ping=10)

    async def keep(request: Request) -> Response:
        try:
            data = await _body(request)
            seed = data.get("seed")
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise SoundscapeError("'seed' must be an integer")
            return JSONResponse(await call(service.keep, _str(data, "scene"),
                                           _str(data, "element"), seed,
                                           _str(data, "variant", False)))
        except Exception as e:
            return _fail(e)

    async def element(request: Request) -> Response:
        try:
            data = await _body(request)
            values = {}
            for key in ("volume_db", "pan"):
                v = data.get(key)
                if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
                    raise SoundscapeError(f"'{key}' must be a number")
                values[key] = v
            mute = data.get("mute")
            if mute is not None and not isinstance(mute, bool):
                raise SoundscapeError("'mute' must be true or false")
            scene = _str(data, "scene")
            result = await call(service.set_element, scene, _str(data, "element"),
                                _str(data, "variant", False), mute=mute, **values)
        except Exception as e:
            return _fail(e)
        w = studio.watches.get(service.path(scene)) if scene.endswith((".yaml", ".yml")) \
            else None
        if w is not None:
            studio.publish(w, {"type": "edited", **result})
            studio.spawn(w)
        return JSONResponse(result)

    async def renders(request: Request) -> Response:
        return JSONResponse(await call(service.list_renders))

    async def manifest(request: Request) -> Response:
        try:
            return JSONResponse(await call(service.read_manifest,
                                           request.query_params.get("path", "")))
        except Exception as e:
            return _fail(e)

    async def files(request: Request) -> Response:
        try:
            p = service.path(request.path_params["path"])
            if not p.is_file():
                raise AccessError(f"{request.path_params['path']}: no such file under the "
                                  f"server's root")
        except Exception as e:
            return _fail(e)
        return FileResponse(p, headers={"cache-control": "no-cache"})

    async def studio_page(request: Request) -> Response:
        scene = request.path_params["path"]
        variant = request.query_params.get("variant") or None
        try:
            w = studio.watch(scene, variant)
            state = await studio.ensure(w, variant)
            if state is None:
                return JSONResponse({"error": w.error}, status_code=422)
            page = service.path(state["directory"]) / "index.html"
            text = page.read_text(encoding="utf-8")
        except Exception as e:
            return _fail(e)
        boot = {"scene": w.rel, "variant": variant, "state": state}
        return HTMLResponse(inject(text, f"/files/{state['directory']}/", boot, _script()),
                            headers={"cache-control": "no-store"})

    async def studio_events(request: Request) -> Response:
        try:
            w = studio.watch(request.query_params.get("scene", ""),
                             request.query_params.get("variant") or None)
        except Exception as e:
            return _fail(e)
        q = await studio.subscribe(w)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            try:
                while True:
                    msg = await q.get()
                    yield {"event": msg["type"], "data": json.dumps(msg)}
            finally:
                w.subscribers.discard(q)

        return EventSourceResponse(stream(), ping=10)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(studio.run())
        for s in scenes:  # rendered (or found up to date) at once, watched from then on
            studio.spawn(studio.watch(s))
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            watcher.cancel()
            await asyncio.to_thread(jobs.wait_all, 30.0)

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", no_icon),
        Route("/api/validate", validate, methods=["POST"]),
        Route("/api/plan", plan, methods=["POST"]),
        Route("/api/jobs", start_job, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job}", get_job, methods=["GET"]),
        Route("/api/jobs/{job}", cancel_job, methods=["DELETE"]),
        Route("/api/jobs/{job}/events", job_events, methods=["GET"]),
        Route("/api/keep", keep, methods=["POST"]),
        Route("/api/element", element, methods=["POST"]),
        Route("/api/renders", renders),
        Route("/api/manifest", manifest),
        Route("/files/{path:path}", files),
        Route("/studio/{path:path}", studio_page),
        Route("/api/studio/events", studio_events),
        *mcp_app.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_Guard, loopback=host in LOOPBACK)
    return app
