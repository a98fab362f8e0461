"""Take store: content-addressed takes on disk.

Input: ``TakeRequest`` keys and generated takes. Output: the cached take, or None when it is
missing or damaged. Each entry is ``<key>.json`` (the sidecar and commit marker: prompt,
settings, seed, model, duration, creation and generation time, and the audio file's SHA-256)
plus the audio file it names. Audio is written first, then the sidecar, both atomically; a
reader trusts an entry only if the sidecar parses and the audio's hash matches. Two renders
writing one key never corrupt each other: each names its audio file by its own content hash.
A render generates a key only while it holds the key's lock (``<key>.lock`` beside the entry, an
flock released when its holder dies), so two renders at once never generate one take twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from .. import locks
from ..audio_io import atomic_path, atomic_write_text, remove_stale_temps
from ..dirs import default_cache_dir
from ..generate import GENERATOR_VERSION, TakeRequest
from ..generate.engines import ENGINES


class TakeCache:
    """A directory of takes addressed by ``TakeRequest.key``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.problems: list[str] = []
        self._loaded: dict[str, tuple[np.ndarray, int]] = {}  # verified and decoded, read-only

    def _dir(self, key: str) -> Path:
        return self.root / "takes" / key[:2]

    def sidecar_path(self, key: str) -> Path:
        return self._dir(key) / f"{key}.json"

    def try_lock(self, key: str) -> int | None:
        """Take the key's generation lock without waiting: its descriptor, or None when another
        process holds it. Temporary files that dead writers left in the entry's folder go."""
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(d)
        return locks.try_lock(d / f"{key}.lock")

    def wait_lock(self, key: str) -> int:
        """Take the key's generation lock, waiting while another process generates it."""
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        return locks.lock(d / f"{key}.lock")

    def entry(self, key: str) -> dict | None:
        """The sidecar of a sound entry, else None (damaged entries are noted and ignored)."""
        side = self.sidecar_path(key)
        if not side.is_file():
            return None
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            audio_path = side.parent / meta["audio_file"]
            data = audio_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["audio_sha256"]:
                raise ValueError("audio hash mismatch")
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.problems.append(f"cache entry {key[:12]} is damaged ({e}); generating it again")
            return None
        meta["_bytes"] = data
        return meta

    def has(self, key: str) -> bool:
        """Whether a sound entry exists (verified and decoded once; ``get`` then reuses it)."""
        return self.get(key) is not None

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        """``(take, sample_rate)`` or None. The take is float32 ``(1, frames)``, read-only."""
        if key in self._loaded:
            return self._loaded[key]
        meta = self.entry(key)
        if meta is None:
            return None
        from pedalboard.io import AudioFile

        try:
            with AudioFile(io.BytesIO(meta["_bytes"])) as f:
                audio = f.read(f.frames)
                sr = int(round(f.samplerate))
        except Exception as e:
            self.problems.append(f"cache entry {key[:12]} is unreadable ({e}); generating again")
            return None
        if audio.shape[1] != meta.get("frames"):
            self.problems.append(f"cache entry {key[:12]} has the wrong length; generating again")
            return None
        take = np.ascontiguousarray(audio, dtype=np.float32)
        take.flags.writeable = False
        self._loaded[key] = (take, sr)
        return take, sr

    def put(self, request: TakeRequest, audio: np.ndarray, sample_rate: int,
            generation_s: float, generator: dict[str, str] | None = None) -> Path:
        """Store a take; returns the sidecar path. ``generator``: how it was made (device,
        precision), recorded in the sidecar and reported by ``generated_with``."""
        from pedalboard.io import AudioFile

        key = request.key
        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with AudioFile(buf, "w", sample_rate, audio.shape[0], format="wav", bit_depth=32) as f:
            f.write(np.ascontiguousarray(audio, dtype=np.float32))
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        audio_name = f"{key}.{digest[:12]}.wav"
        with atomic_path(d / audio_name) as tmp:
            tmp.write_bytes(data)
        meta = {
            "key": key,
            "prompt": request.prompt,
            "duration_s": request.duration_s,
            "settings": request.settings,
            "seed": request.seed,
            "model": request.model,
            "sample_rate": sample_rate,
            "frames": int(audio.shape[1]),
            "audio_file": audio_name,
            "audio_sha256": digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "generation_s": round(generation_s, 3),
            "generator_version": GENERATOR_VERSION,
            **({"generator": generator} if generator else {}),
            "engine": request.engine,
            "revision": request.revision,
            "licence": ENGINES[request.engine].licence.name,
        }
        atomic_write_text(self.sidecar_path(key), json.dumps(meta, indent=2))
        return self.sidecar_path(key)

    def generated_with(self, key: str) -> dict[str, str] | None:
        """The device and precision a stored take was generated with (None: not recorded)."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            got = json.loads(self.sidecar_path(key).read_text(encoding="utf-8")).get("generator")
            return got if isinstance(got, dict) else None
        return None

    def audio_path(self, key: str) -> Path | None:
        side = self.sidecar_path(key)
        with contextlib.suppress(OSError, ValueError, KeyError):
            return side.parent / json.loads(side.read_text())["audio_file"]
        return None
