"""Servers, the service layer: the library's jobs as calls on a folder, for MCP and HTTP.

Input: paths relative to a root folder (or a scene's YAML text), and the job's options. Output:
plain JSON-ready dicts (the manifest as written, files as paths relative to the root), and
``SoundscapeError``s whose message is the line the CLI prints. The transports hold no logic:
they turn arguments into these calls and results or errors into their protocol.

Safety: every path a caller gives must be relative and stay under the root once links are
followed (``..``, absolute paths and symlinks out of the root are refused); a scene's recordings
must be under the root too; YAML text is bounded like a scene file. A job is cancelled by the
``cancel`` event, checked at every progress and log call: the render stops the way Ctrl-C stops
it (finished takes stay cached, no half-written file is left).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SceneError, SoundscapeError
from ..locks import locked
from ..options import GenerationOptions, OutputOptions

MAX_SCENE_BYTES = 1 << 20  # as a scene file (scene.load)
MAX_TAKES = 64
Events = Callable[[dict[str, Any]], None]


class AccessError(SoundscapeError):
    """A path outside the server's root, or one that does not exist."""


class Cancelled(SoundscapeError):
    """The job was cancelled by its caller."""


@dataclass(frozen=True)
class Settings:
    """What a server renders with: its root and the generation options it was started with."""

    root: Path
    out: str = "renders"
    model: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    max_batch: int = 8
    precision: str = "auto"


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class Service:
    """The library's jobs, confined to ``settings.root``."""

    def __init__(self, settings: Settings) -> None:
        root = Path(settings.root).resolve()
        if not root.is_dir():
            raise SoundscapeError(f"--root {settings.root} is not a folder")
        self.settings = settings
        self.root = root
        self.out = self.path(settings.out, must_exist=False)

    # --- paths -------------------------------------------------------------------------
    def path(self, given: str | Path, *, must_exist: bool = True) -> Path:
        """``given`` (relative to the root) as an absolute path that stays under the root.

        Raises:
            AccessError: for an absolute path, a ``..`` step, a link that leads out of the
                root, or (``must_exist``) a path that is not there.
        """
        text = str(given)
        p = Path(text)
        if not text or "\0" in text:
            raise AccessError("an empty path; give a path under the server's root")
        if p.is_absolute() or text.startswith("~"):
            raise AccessError(f"{text}: an absolute path; give a path under the server's root")
        if ".." in p.parts:
            raise AccessError(f"{text}: '..' leads out of the server's root; give a path under it")
        full = (self.root / p).resolve()
        if not _within(full, self.root):
            raise AccessError(f"{text}: a link out of the server's root; refused")
        if must_exist and not full.exists():
            raise AccessError(f"{text}: no such file under the server's root")
        return full

    def rel(self, path: Path) -> str:
        """A path under the root as the caller wrote it: relative, with '/'."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def _words(self, e: SoundscapeError) -> SoundscapeError:
        """The error with the root's absolute prefix taken out of its message."""
        prefix = str(self.root) + os.sep
        if prefix not in str(e):
            return e
        if isinstance(e, SceneError):
            return SceneError([x.replace(prefix, "") for x in e.lines])
        try:
            return type(e)(str(e).replace(prefix, ""))
        except TypeError:
            return SoundscapeError(str(e).replace(prefix, ""))

    def scene_file(self, scene: str) -> Path:
        """A scene given as a path under the root, or as YAML text (stored under
        ``<out>/.inline/`` by its content's hash, so its errors name a file and line)."""
        if "\n" not in scene and scene.strip().endswith((".yaml", ".yml")):
            return self.path(scene.strip())
        data = scene.encode("utf-8")
        if len(data) > MAX_SCENE_BYTES:
            raise SceneError(f"<scene text>: {len(data) / 2**20:.1f} MiB; a scene is at most "
                             f"1 MiB of YAML")
        if "\n" not in scene and ":" not in scene:
            raise AccessError(f"{scene}: not a .yaml file under the server's root, nor YAML text")
        folder = self.out / ".inline"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.blake2b(data, digest_size=6).hexdigest()}.yaml"
        if not path.is_file():
            from ..audio_io import atomic_write_text

            atomic_write_text(path, scene)
        return path

    def _load(self, scene: str, variant: str | None = None) -> Any:
        from ..scene import load_scene

        path = self.scene_file(scene)
        s = load_scene(path, variant)
        where = self.rel(path)
        for name, e in s.elements.items():
            if e.file is not None:
                f = (s.base_dir / e.file).resolve()
                if not _within(f, self.root):
                    raise AccessError(f"{where}: elements.{name}.file: {e.file} is outside the "
                                      f"server's root; copy the recording under it")
        model = Path(s.model)
        if model.is_absolute() and model.exists() and not _within(model.resolve(), self.root) \
                and str(model) != self.settings.model:
            raise AccessError(f"{where}: model: {s.model} is outside the server's root")
        return s

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one of the methods below with its errors' messages relative to the root."""
        try:
            return fn(*args, **kwargs)
        except SoundscapeError as e:
            raise self._words(e) from None

    # --- jobs --------------------------------------------------------------------------
    def validate(self, scene: str) -> dict[str, Any]:
        """Load the scene and all its variants: a summary line each, or a ``SceneError``."""
        base = self._load(scene)
        out = []
        for v in [None, *base.variants]:
            s = base if v is None else self._load(scene, v)
            prompts = sum(1 for e in s.elements.values() if e.prompt)
            out.append({"variant": v, "elements": len(s.elements), "generated": prompts,
                        "duration_s": s.duration, "sample_rate": s.sample_rate,
                        "channels": s.channels})
        return {"scene": base.name, "ok": True, "renders": out}

    def plan(self, scene: str, variant: str | None = None) -> dict[str, Any]:
        """The arrangement as a timeline, without generating anything."""
        from ..arrange import arrange, describe
        from ..takes.plan import take_length_s

        s = self._load(scene, variant)
        arr = arrange(s, {name: take_length_s(s, name) for name in s.elements})
        return {"scene": s.label, "timeline": describe(arr),
                "warnings": [str(w) for w in arr.warnings]}

    def _gen(self, events: Events | None, cancel: threading.Event | None) \
            -> GenerationOptions:
        """The server's generation settings, reporting to ``events`` and stopping at
        ``cancel``."""
        log, progress = self._hooks(events, cancel)
        cfg = self.settings
        return GenerationOptions(model=cfg.model, device=cfg.device,
                                 cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
                                 max_batch=cfg.max_batch, precision=cfg.precision, log=log,
                                 progress=progress)

    def _hooks(self, events: Events | None, cancel: threading.Event | None) \
            -> tuple[Callable[[str], None], Callable[[str, int, int], None]]:
        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled; finished takes are cached and no partial file "
                                "was left")

        def log(message: str) -> None:
            check()
            if events:
                events({"type": "log", "message": message})

        def progress(label: str, step: int, total: int) -> None:
            check()
            if events:
                events({"type": "progress", "label": label, "step": step, "total": total})

        return log, progress

    def render(self, scene: str, variant: str | None = None, *, all_variants: bool = False,
               only: list[str] | None = None, force: bool = False,
               events: Events | None = None, cancel: threading.Event | None = None) \
            -> dict[str, Any]:
        """Render a scene (only what changed); the manifest and files of each render."""
        from ..pipelines.render import render_scenes, select_scenes

        path = self.scene_file(scene)
        self._load(scene, variant)
        gen = self._gen(events, cancel)
        gen.log(f"rendering {self.rel(path)}")
        results = render_scenes(select_scenes(path, variant, all_variants), gen,
                                OutputOptions(out=self.out, force=force,
                                              only=frozenset(only) if only else None))
        return {"renders": [self.describe(r.directory) | {"up_to_date": r.up_to_date}
                            for r in results]}

    def describe(self, directory: Path) -> dict[str, Any]:
        """A render folder: its manifest and its files relative to the root."""
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        d = self.rel(directory)
        page = directory / "index.html"
        return {"directory": d, "manifest_file": f"{d}/manifest.json",
                "mix": f"{d}/{manifest['mix']['file']}",
                "stems": {e["element"]: f"{d}/{e['stem']}" for e in manifest["elements"]
                          if e.get("stem")},
                "page": f"{d}/index.html" if page.is_file() else None,
                "manifest": manifest}

    def audition(self, scene: str, element: str, n: int = 4, variant: str | None = None,
                 events: Events | None = None, cancel: threading.Event | None = None) \
            -> dict[str, Any]:
        """N takes of one element with distinct seeds, side by side, and their page."""
        from ..pipelines.audition import audition_takes

        if not 1 <= n <= MAX_TAKES:
            raise SoundscapeError(f"n: {n} takes; give 1 to {MAX_TAKES}")
        path = self.scene_file(scene)
        self._load(scene, variant)
        files = audition_takes(path, element, n, self._gen(events, cancel), variant=variant,
                               out=self.out)
        return {"element": element, "variant": variant,
                "takes": [{"seed": seed, "file": self.rel(p)} for seed, p in files],
                "page": self.rel(files[0][1].parent / "index.html")}

    def edit_lock(self, scene_path: Path) -> Any:
        """The lock that serialises edits of one scene: a lock file in its output folder."""
        from ..scene import load_scene

        name = load_scene(scene_path).name
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        return locked(folder / ".edit.lock")

    def keep(self, scene: str, element: str, seed: int, variant: str | None = None) \
            -> dict[str, Any]:
        """Write a take's seed into the scene file (one line changes)."""
        from ..scene.keep import keep_seed

        path = self.scene_file(scene)
        self._load(scene, variant)
        with self.edit_lock(path):
            where = keep_seed(path, element, seed, variant)
        return {"scene": self.rel(path), "set": ".".join(where), "value": seed}

    def set_element(self, scene: str, element: str, variant: str | None = None, *,
                    volume_db: float | None = None, pan: float | None = None,
                    mute: bool | None = None) -> dict[str, Any]:
        """Write an element's volume, pan or mute into the scene file (one line each), under
        the edit lock, so two edits at once both land."""
        from ..scene.edit import edit_file, element_path, yaml_level, yaml_number

        path = self.scene_file(scene)
        values: dict[str, str] = {}
        if volume_db is not None:
            if not -120 <= volume_db <= 24:
                raise SoundscapeError(f"volume: {volume_db} dB; give -120 to 24 dB")
            values["volume"] = yaml_level(volume_db)
        if pan is not None:
            if not -1 <= pan <= 1:
                raise SoundscapeError(f"pan: {pan}; give -1 (left) to 1 (right)")
            values["pan"] = yaml_number(pan)
        if mute is not None:
            values["mute"] = "true" if mute else "false"
        if not values:
            raise SoundscapeError("nothing to change: give volume_db, pan or mute")
        display = self.rel(path)
        written = {}
        with self.edit_lock(path):
            for key, value in values.items():
                text = path.read_text(encoding="utf-8")
                where = element_path(text, element, variant, key, display)
                edit_file(path, where, value, display)
                written[".".join(where)] = value
            self._load(scene, variant)  # the edit leaves a valid scene
        return {"scene": display, "set": written}

    def sfx(self, sfx_list: str, events: Events | None = None,
            cancel: threading.Event | None = None) -> dict[str, Any]:
        """Render an SFX list: its manifest and files."""
        from ..pipelines.sfx import render_sfx_list

        path = self.path(sfx_list)
        r = render_sfx_list(path, self._gen(events, cancel), self.out)
        return {"manifest_file": self.rel(r.manifest), "generated": r.generated,
                "files": [self.rel(r.directory / v.file) for v in r.variations],
                "warnings": [str(w) for w in r.warnings]}

    def list_renders(self) -> list[dict[str, Any]]:
        """Every render under the output folder: scene, variant, folder, mix loudness."""
        found = []
        if self.out.is_dir():
            for m in sorted(self.out.rglob("manifest.json")):
                try:
                    data = json.loads(m.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if "mix" not in data:
                    continue
                found.append({"scene": data.get("scene"), "variant": data.get("variant"),
                              "directory": self.rel(m.parent),
                              "mix_lufs": data["mix"].get("loudness_lufs"),
                              "created": data.get("created")})
        return found

    def read_manifest(self, path: str) -> dict[str, Any]:
        """A render's manifest, given its folder or its manifest.json under the root."""
        p = self.path(path)
        if p.is_dir():
            p = p / "manifest.json"
        if p.name != "manifest.json" or not p.is_file():
            raise AccessError(f"{path}: not a render folder or manifest.json")
        try:
            data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SoundscapeError(f"{path}: not a readable manifest ({e})") from None
        return data
