"""Generator stage: find a model's weights (hub id, local directory, Hugging Face cache).

Input: the scene's or the CLI's ``model`` string. Output: a ``ModelRef`` saying where the two
checkpoint files are and a stable identity for cache keys. No torch import here, so a fully
cached render can compute its keys without loading anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
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

    @property
    def public_name(self) -> str:
        """The model as files, tags and manifests name it: the hub id, or for a local directory
        its anonymous identity (``dir:<hash>``), never the folder's path."""
        return self.name if self.local_dir is None else self.identity


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


# AudioGen's text encoder. Every published AudioGen config names it; audiocraft loads it with
# transformers' from_pretrained, so it must sit in the Hugging Face cache beside the model.
TEXT_ENCODER = "t5-large"
# What transformers reads for a T5 encoder and its tokenizer; the repository's TensorFlow, Flax,
# Rust and ONNX weights (gigabytes) are never fetched. Optional names may be absent.
TEXT_ENCODER_FILES = ("config.json", "spiece.model")
TEXT_ENCODER_OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "generation_config.json")
TEXT_ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the first one present
DEFAULT_HUB_TIMEOUT_S = 10.0

Log = Callable[[str], None]


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads it
    once at import; soundscape reads it at every call, so a changed HF_HOME is honoured)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(env["HF_HUB_CACHE"])).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(env["HUGGINGFACE_HUB_CACHE"])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_timeout_s() -> float:
    """Seconds to wait for the hub to answer (``HF_HUB_ETAG_TIMEOUT``, huggingface_hub's own
    knob; 10 s by default)."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_HUB_TIMEOUT_S)
    except ValueError:
        return DEFAULT_HUB_TIMEOUT_S


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cached_file(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    return Path(p) if isinstance(p, str) else None


def cached_snapshot(repo_id: str, files: tuple[str, ...]) -> Path | None:
    """The cached snapshot directory holding all of ``files`` for ``repo_id``, or None."""
    found = [_cached_file(repo_id, f) for f in files]
    if any(p is None for p in found):
        return None
    parents = {p.parent for p in found if p is not None}
    return parents.pop() if len(parents) == 1 else None


def cached_hub_dir(repo_id: str) -> Path | None:
    """The snapshot directory holding both checkpoint files in the HF cache, or None."""
    return cached_snapshot(repo_id, FILES)


def text_encoder_dir(name: str = TEXT_ENCODER) -> Path | None:
    """The cached snapshot of a T5 text encoder with its tokenizer and weights, or None."""
    snap = cached_snapshot(name, TEXT_ENCODER_FILES)
    if snap is None or not any((snap / w).is_file() for w in TEXT_ENCODER_WEIGHTS):
        return None
    return snap


def hf_home() -> str:
    return str(hub_cache_dir())


def not_found_message(repo_id: str, reason: str) -> str:
    return (f"model '{repo_id}' is not available: {reason}. Looked in the Hugging Face cache "
            f"({hf_home()}). Fix: on a connected machine run 'hf download {repo_id}' and "
            f"'hf download {TEXT_ENCODER}' (AudioGen's text encoder), then copy the cache folder "
            f"here and point HF_HOME at it; or pass --model DIR with a directory holding "
            f"{LM_FILE} and {COMPRESSION_FILE}; or try the pipeline offline with "
            f"'soundscape dev tiny-model DIR' and --model DIR")


def _pick_text_encoder_files(names: list[str]) -> list[str]:
    wanted = [f for f in TEXT_ENCODER_FILES + TEXT_ENCODER_OPTIONAL if f in names]
    weights = [w for w in TEXT_ENCODER_WEIGHTS if w in names][:1]
    return wanted + weights


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:200] if first else type(e).__name__


def download(repo_id: str, text_encoder: bool = False, log: Log | None = None,
             timeout_s: float | None = None) -> Path:
    """Download what soundscape needs of ``repo_id`` into the HF cache; returns the snapshot.

    AudioGen: its two checkpoint files. A text encoder (``text_encoder=True``): only the files
    transformers reads (config, tokenizer, one weights file). Progress bars are
    huggingface_hub's own, on stderr.

    Raises:
        ModelNotFoundError: the hub cannot be reached, answers with an error, is too slow
            (``timeout_s``, default ``HF_HUB_ETAG_TIMEOUT`` or 10 s), or lacks the files.
    """
    from huggingface_hub import HfApi, hf_hub_download

    timeout = hub_timeout_s() if timeout_s is None else timeout_s
    endpoint = hub_endpoint()
    cache = hub_cache_dir()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        wanted = _pick_text_encoder_files(list(sizes)) if text_encoder else list(FILES)
        required = TEXT_ENCODER_FILES if text_encoder else FILES
        missing = [f for f in required if f not in sizes]
        if text_encoder and not any(w in sizes for w in TEXT_ENCODER_WEIGHTS):
            missing.append(" or ".join(TEXT_ENCODER_WEIGHTS))
        if missing:
            raise ModelNotFoundError(not_found_message(
                repo_id, f"the hub's {repo_id} lacks {', '.join(missing)}"))
        total = sum(sizes[f] for f in wanted)
        if log is not None:
            log(f"downloading {repo_id} ({len(wanted)} files, {total / 1e6:,.1f} MB) from "
                f"{endpoint} into {cache}")
        paths = [Path(hf_hub_download(repo_id, f, cache_dir=cache, endpoint=endpoint,
                                      etag_timeout=timeout)) for f in wanted]
    except ModelNotFoundError:
        raise
    except Exception as e:  # network and HTTP errors come in many types; all mean the same here
        raise ModelNotFoundError(not_found_message(
            repo_id, f"the Hugging Face hub at {endpoint} could not be reached or failed "
                     f"({_first_line(e)})")) from None
    return paths[0].parent


def locate(ref: ModelRef, timeout_s: float | None = None, log: Log | None = None) -> Path:
    """The local directory with both checkpoint files, downloading from the hub if needed.

    For a hub model the text encoder (``t5-large``) is made available too, so the first render
    on a connected machine downloads both. Checks the cache first and fails fast when offline
    or when the hub cannot be reached (audiocraft alone would retry and then raise a traceback).
    """
    if ref.local_dir is not None:
        return ref.local_dir
    model_dir = cached_hub_dir(ref.name)
    has_encoder = text_encoder_dir(TEXT_ENCODER) is not None
    if model_dir is not None and has_encoder:
        return model_dir
    if offline():
        if model_dir is None:
            raise ModelNotFoundError(not_found_message(
                ref.name, "HF_HUB_OFFLINE is set and the weights are not in the cache"))
        raise ModelNotFoundError(not_found_message(
            TEXT_ENCODER, f"HF_HUB_OFFLINE is set and {ref.name}'s text encoder "
                          f"'{TEXT_ENCODER}' is not in the cache"))
    if model_dir is None:
        model_dir = download(ref.name, log=log, timeout_s=timeout_s)
    if not has_encoder:
        download(TEXT_ENCODER, text_encoder=True, log=log, timeout_s=timeout_s)
    return model_dir


def ensure_text_encoder(name: str, needed_by: str, log: Log | None = None) -> Path:
    """The cached snapshot of text encoder ``name``, downloaded when missing and online."""
    found = text_encoder_dir(name)
    if found is not None:
        return found
    if offline():
        raise ModelNotFoundError(not_found_message(
            name, f"{needed_by} needs the text encoder '{name}', which is not in the cache "
                  f"(HF_HUB_OFFLINE is set)"))
    return download(name, text_encoder=True, log=log)
