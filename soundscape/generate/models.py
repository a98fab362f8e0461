"""Generator stage: find a model's weights (hub id, local directory, Hugging Face cache).

Input: the scene's or the CLI's ``model`` string. Output: a ``ModelRef`` saying where the two
checkpoint files are and a stable identity for cache keys. No torch import here, so a fully
cached render can compute its keys without loading anything.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
FILES = (LM_FILE, COMPRESSION_FILE)


@dataclass(frozen=True)
class ModelRef:
    """A model by hub id or local directory."""

    name: str
    local_dir: Path | None  # set for a local checkpoint directory

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    @property
    def identity(self) -> str:
        """What goes into take cache keys: the hub id, or a fingerprint of the local files."""
        if self.local_dir is None:
            return f"hub:{self.name}"
        h = hashlib.sha256()
        for f in FILES:
            p = self.local_dir / f
            size = p.stat().st_size
            h.update(f"{f}:{size}:".encode())
            with p.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read(1 << 20))
        return f"dir:{h.hexdigest()[:16]}"


def resolve(model: str, base_dir: Path | None = None) -> ModelRef:
    """Interpret ``model``: an existing directory is a local checkpoint; otherwise a hub id.

    Raises:
        ModelNotFoundError: a directory that lacks the checkpoint files, or a path that does
            not exist.
    """
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_dir():
        path = base_dir / path
    if path.is_dir():
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"model directory {path} lacks {', '.join(missing)}; it must hold audiocraft's "
                f"export layout ({LM_FILE} + {COMPRESSION_FILE}), e.g. a snapshot of "
                f"facebook/audiogen-medium, or run 'soundscape dev tiny-model {path}'")
        return ModelRef(model, path.resolve())
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:
        raise ModelNotFoundError(
            f"model {model!r} is neither a directory nor a Hugging Face id like "
            f"'facebook/audiogen-medium'; give a checkpoint directory or a hub id")
    return ModelRef(model, None)


def cached_hub_dir(repo_id: str) -> Path | None:
    """The snapshot directory holding both checkpoint files in the HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = []
    for f in FILES:
        p = try_to_load_from_cache(repo_id, f)
        if not isinstance(p, str):
            return None
        found.append(Path(p).parent)
    return found[0] if found[0] == found[1] else None


def hub_is_cached(repo_id: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_home() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def not_found_message(repo_id: str, reason: str) -> str:
    return (f"model '{repo_id}' is not available: {reason}. Looked in the Hugging Face cache "
            f"({hf_home()}). Fix: on a connected machine run 'hf download {repo_id}' and "
            f"'hf download t5-large' (AudioGen's text encoder), then copy the cache folder here "
            f"and point HF_HOME at it; or pass --model DIR with a directory holding "
            f"{LM_FILE} and {COMPRESSION_FILE}; or try the pipeline offline with "
            f"'soundscape dev tiny-model DIR' and --model DIR")


def locate(ref: ModelRef, timeout_s: float = 10.0) -> Path:
    """The local directory with both checkpoint files, downloading from the hub if needed.

    Checks the cache first and fails fast when offline or when the hub cannot be reached
    (audiocraft alone would retry for ~23 s and then raise a traceback).
    """
    if ref.local_dir is not None:
        return ref.local_dir
    cached = cached_hub_dir(ref.name)
    if cached is not None:
        return cached
    if offline():
        raise ModelNotFoundError(not_found_message(ref.name, "HF_HUB_OFFLINE is set and the "
                                                   "weights are not in the cache"))
    try:
        from huggingface_hub import HfApi, hf_hub_download

        HfApi().model_info(ref.name, timeout=timeout_s)
        paths = [Path(hf_hub_download(ref.name, f)) for f in FILES]
    except Exception as e:  # network errors come in many types; all mean the same here
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(not_found_message(
            ref.name, f"the Hugging Face hub could not be reached ({first[:120]})")) from None
    return paths[0].parent
