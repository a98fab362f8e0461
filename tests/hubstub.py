"""A stand-in for the Hugging Face hub: serves a cache written by ``write_hub_replica`` over HTTP
on 127.0.0.1 the way huggingface_hub expects (``/api/models/<repo>[/revision/<rev>]`` listings,
``HEAD``/``GET /<repo>/resolve/<rev>/<file>`` with ``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag`` and ``X-Linked-Size``). ``mode``: ``ok``, ``error`` (every request answers
500) or ``hang`` (requests are accepted and never answered). ``gated`` repositories answer 401
(``X-Error-Code: GatedRepo``, as the hub does) unless the request carries ``Bearer <token>``;
``authorizations`` records every request's Authorization header."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from soundscape.generate.dev.replica import blob_etag, repo_folder


class HubStub:
    def __init__(self, hub_cache: Path, repos: tuple[str, ...], mode: str = "ok",
                 gated: tuple[str, ...] = (), token: str | None = None) -> None:
        self.mode = mode
        self.gated = gated
        self.token = token
        self.authorizations: list[str | None] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        for repo in repos:
            root = hub_cache / repo_folder(repo)
            commit = (root / "refs" / "main").read_text().strip()
            snap = root / "snapshots" / commit
            files = {p.relative_to(snap).as_posix(): p.read_bytes()
                     for p in sorted(snap.rglob("*")) if p.is_file()}
            self.repos[repo] = (commit, files)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                stub._answer(self, body=False)

            def do_GET(self) -> None:
                stub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fetched(self, repo: str) -> set[str]:
        """Files of ``repo`` whose content was downloaded (GET)."""
        prefix = f"/{repo}/resolve/"
        return {p[len(prefix):].split("/", 1)[1] for m, p in self.requests
                if m == "GET" and p.startswith(prefix)}

    def _repo_of(self, path: str) -> tuple[str, str] | None:
        for repo in self.repos:
            if path == repo or path.startswith(repo + "/"):
                return repo, path[len(repo):].lstrip("/")
        return None

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        auth = h.headers.get("Authorization")
        self.authorizations.append(auth)
        repo_hit = self._repo_of(path[len("/api/models/"):] if path.startswith("/api/models/")
                                 else path.lstrip("/"))
        if repo_hit is not None and repo_hit[0] in self.gated and (
                self.token is None or auth != f"Bearer {self.token}"):
            self._send(h, 401, b'{"error": "Access to model is restricted."}', body,
                       {"X-Error-Code": "GatedRepo",
                        "X-Error-Message": "Access to model is restricted."})
            return
        if self.mode == "hang":
            time.sleep(60)
            return
        if self.mode == "error":
            self._send(h, 500, b'{"error": "Internal Error"}', body)
            return
        if path.startswith("/api/models/"):
            found = self._repo_of(path[len("/api/models/"):])
            if found is None:
                self._send(h, 404, b'{"error": "Repository not found"}', body)
                return
            repo = found[0]
            commit, files = self.repos[repo]
            siblings = []
            for name, data in files.items():
                etag = blob_etag(name, data)
                s: dict = {"rfilename": name, "size": len(data), "blobId": etag}
                if len(etag) == 64:  # an LFS file: its SHA-256
                    s["lfs"] = {"sha256": etag, "size": len(data), "pointerSize": 134}
                siblings.append(s)
            payload = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                       "siblings": siblings, "tags": [], "downloads": 0, "likes": 0}
            self._send(h, 200, json.dumps(payload).encode(), body,
                       {"Content-Type": "application/json"})
            return
        found = self._repo_of(path.lstrip("/"))
        if found is None or not found[1].startswith("resolve/"):
            self._send(h, 404, b"not found", body)
            return
        repo, rest = found
        _, _rev, name = rest.split("/", 2)
        commit, files = self.repos[repo]
        if name not in files:
            self._send(h, 404, b"Entry not found", body, {"X-Error-Code": "EntryNotFound"})
            return
        data = files[name]
        etag = blob_etag(name, data)
        self._send(h, 200, data, body, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                        "X-Linked-Etag": f'"{etag}"',
                                        "X-Linked-Size": str(len(data)),
                                        "Content-Type": "application/octet-stream"})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, body: bool,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
