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
from .engines import (
    ENGINES,
    SAO_1_SPEC,
    SAO_SMALL_SPEC,
    EngineSpec,
    by_short_name,
    detect_folder,
    layouts_text,
)

LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"
FILES = (LM_FILE, COMPRESSION_FILE)


@dataclass(frozen=True)
class ModelRef:
    """A model by hub id or local directory, and the engine family that runs it."""

    name: str
    local_dir: Path | None  # set for a local checkpoint directory
    engine: str = "audiogen"

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    @property
    def spec(self) -> EngineSpec:
        return ENGINES[self.engine]

    @property
    def identity(self) -> str:
        """What goes into take cache keys as the model: the hub id, or a fingerprint of the
        local files (which is then also its revision)."""
        if self.local_dir is None:
            return f"hub:{self.name}"
        return f"dir:{folder_hash(self.local_dir, self.engine)}"

    @property
    def public_name(self) -> str:
        """The model as files, tags and manifests name it: the hub id, or for a local directory
        its anonymous identity (``dir:<hash>``), never the folder's path."""
        return self.name if self.local_dir is None else self.identity

    def revision(self) -> str | None:
        """The exact weights: the commit of the cached hub snapshot, or the local files' hash;
        None for a hub model not in the cache yet (``locate`` downloads it)."""
        if self.local_dir is not None:
            return self.identity
        snap = cached_model_dir(self)
        return snap.name if snap is not None else None


def _hash_files(paths: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for rel, p in paths:
        size = p.stat().st_size
        h.update(f"{rel}:{size}:".encode())
        with p.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def folder_hash(path: Path, engine: str = "audiogen") -> str:
    """A fingerprint of a local model folder: every file the engine reads (name, size, first
    and last MiB). AudioGen's keeps its old definition (its two files), so its keys stay."""
    if engine == "audiogen":
        return _hash_files([(f, path / f) for f in FILES])
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return _hash_files([(p.relative_to(path).as_posix(), p) for p in files])


def resolve(model: str, base_dir: Path | None = None) -> ModelRef:
    """Interpret ``model``: a short name (``stable-audio-open-small``), an existing directory
    in one of the published layouts, or a hub id. The engine follows from it.

    Raises:
        ModelNotFoundError: a directory in no known layout, or a path that does not exist.
    """
    named = by_short_name(model)
    if named is not None:
        return ModelRef(named.repo, None, named.name)
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_dir():
        path = base_dir / path
    if path.is_dir():
        spec = detect_folder(path)
        if spec is None:
            missing = [f for f in FILES if not (path / f).is_file()]
            raise ModelNotFoundError(
                f"model directory {path} lacks {', '.join(missing)}; it must hold one of the "
                f"published layouts: {layouts_text()}, e.g. a snapshot of "
                f"facebook/audiogen-medium, or run 'soundscape dev tiny-model {path}'")
        return ModelRef(model, path.resolve(), spec.name)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:
        raise ModelNotFoundError(
            f"model {model!r} is neither a directory nor a Hugging Face id like "
            f"'facebook/audiogen-medium' nor a short name ("
            f"{', '.join(s.short_names[0] for s in ENGINES.values())}); give one of those")
    return ModelRef(model, None, _hub_engine(model))


def _hub_engine(repo_id: str) -> str:
    """The engine of a hub id that is no published repo: from the files of its cached
    snapshot when there is one, else AudioGen (as every hub id was before Stable Audio)."""
    from huggingface_hub import try_to_load_from_cache

    for spec in (SAO_1_SPEC, SAO_SMALL_SPEC):
        p = try_to_load_from_cache(repo_id, spec.marker_files[0], cache_dir=hub_cache_dir())
        if isinstance(p, str):
            return spec.name
    return "audiogen"


# AudioGen's text encoder. Every published AudioGen config names it; audiocraft loads it with
# transformers' from_pretrained, so it must sit in the Hugging Face cache beside the model.
TEXT_ENCODER = "t5-large"
# The text encoder each engine loads from the cache beside its own repository (Stable Audio Open
# 1.0 holds its own in text_encoder/; Small's config names t5-base)
TEXT_ENCODERS = {"audiogen": TEXT_ENCODER, "stable-audio-open-small": "t5-base"}
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
    roots = {p.parents[len(Path(f).parts) - 1] for f, p in zip(files, found, strict=True)
             if p is not None}
    return roots.pop() if len(roots) == 1 else None


def cached_hub_dir(repo_id: str) -> Path | None:
    """The snapshot directory holding both AudioGen checkpoint files in the HF cache, or
    None."""
    return cached_snapshot(repo_id, FILES)


def text_encoder_dir(name: str = TEXT_ENCODER) -> Path | None:
    """The cached snapshot of a T5 text encoder with its tokenizer and weights, or None."""
    snap = cached_snapshot(name, TEXT_ENCODER_FILES)
    if snap is None or not any((snap / w).is_file() for w in TEXT_ENCODER_WEIGHTS):
        return None
    return snap


def hf_home() -> str:
    return str(hub_cache_dir())


def not_found_message(repo_id: str, reason: str, engine: str = "audiogen") -> str:
    if engine != "audiogen":
        spec = ENGINES[engine]
        return (f"model '{repo_id}' is not available: {reason}. Looked in the Hugging Face "
                f"cache ({hf_home()}). Fix: on a connected machine accept the licence at "
                f"https://huggingface.co/{repo_id}, log in ('hf auth login' or HF_TOKEN) and "
                f"run 'hf download {repo_id}', then copy the cache folder here and point "
                f"HF_HOME at it; or pass --model DIR with a folder in {spec.title}'s published "
                f"layout; or try the pipeline offline with 'soundscape dev tiny-model DIR "
                f"--engine {engine}' and --model DIR")
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


# What Stable Audio Open 1.0's engine reads of the published diffusers layout: the pipeline index
# and six component folders. The repository's stable-audio-tools files at its root (model.ckpt,
# model.safetensors: 4.85 GB each) are never fetched.
SAO_1_FOLDERS = ("vae", "text_encoder", "tokenizer", "projection_model", "transformer",
                 "scheduler")
SAO_1_REQUIRED = ("model_index.json", "scheduler/scheduler_config.json",
                  "text_encoder/config.json", "tokenizer/tokenizer_config.json",
                  "projection_model/config.json", "transformer/config.json", "vae/config.json",
                  "projection_model/diffusion_pytorch_model.safetensors",
                  "transformer/diffusion_pytorch_model.safetensors",
                  "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")
SAO_SMALL_REQUIRED = ("model_config.json", "model.ckpt")


def required_files(engine: str) -> tuple[str, ...]:
    """The files of a hub snapshot the engine cannot run without."""
    return {"audiogen": FILES, SAO_1_SPEC.name: SAO_1_REQUIRED,
            SAO_SMALL_SPEC.name: SAO_SMALL_REQUIRED}[engine]


def pick_files(engine: str, names: list[str]) -> list[str]:
    """Of a repository's files, those the engine reads."""
    if engine != SAO_1_SPEC.name:
        return [f for f in required_files(engine) if f in names]
    picked = ["model_index.json"] if "model_index.json" in names else []
    for folder in SAO_1_FOLDERS:
        inside = [n for n in names if n.startswith(folder + "/") and n.count("/") == 1]
        has_st = any(n.endswith(".safetensors") for n in inside)
        picked += [n for n in inside if not (has_st and n.endswith(".bin"))
                   and ".fp16." not in n and not n.endswith((".h5", ".msgpack", ".onnx"))]
    return picked


def cached_model_dir(ref: ModelRef) -> Path | None:
    """The cached snapshot holding every file the model's engine needs, or None."""
    return cached_snapshot(ref.name, required_files(ref.engine))


def hub_token() -> str | None:
    """The token the hub is asked with: ``HF_TOKEN``, else the one ``hf auth login`` stored
    (``HF_TOKEN_PATH``, else ``<HF_HOME>/token``), read now rather than at import."""
    env = os.environ
    if env.get("HF_TOKEN"):
        return env["HF_TOKEN"].strip()
    path = Path(env["HF_TOKEN_PATH"]) if env.get("HF_TOKEN_PATH") else (
        Path(env["HF_HOME"]).expanduser() / "token" if env.get("HF_HOME")
        else hub_cache_dir().parent / "token")
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def gated_message(repo_id: str, status: int | None) -> str:
    """One line for a gated repository that refused this user."""
    said = f"the hub answered {status}" if status else "the hub refused access"
    return (f"model '{repo_id}' is gated and {said}: accept its licence while logged in at "
            f"https://huggingface.co/{repo_id}, then authenticate here with an access token, "
            f"either HF_TOKEN=<token> in the environment or 'hf auth login' (a token is made at "
            f"https://huggingface.co/settings/tokens)")


def _http_status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def download(repo_id: str, text_encoder: bool = False, log: Log | None = None,
             timeout_s: float | None = None, engine: str = "audiogen") -> Path:
    """Download what soundscape needs of ``repo_id`` into the HF cache; returns the snapshot.

    AudioGen: its two checkpoint files; Stable Audio Open 1.0: its diffusers components;
    Small: ``model_config.json`` and ``model.ckpt``. A text encoder (``text_encoder=True``):
    only the files transformers reads (config, tokenizer, one weights file). The token of
    ``hub_token`` is sent (gated repositories need it). Progress bars are huggingface_hub's
    own, on stderr.

    Raises:
        ModelNotFoundError: the hub cannot be reached, answers with an error, is too slow
            (``timeout_s``, default ``HF_HUB_ETAG_TIMEOUT`` or 10 s), refuses a gated
            repository (401/403: how to accept the licence and log in), or lacks the files.
    """
    from huggingface_hub import HfApi, hf_hub_download

    timeout = hub_timeout_s() if timeout_s is None else timeout_s
    endpoint = hub_endpoint()
    cache = hub_cache_dir()
    token = hub_token()
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, timeout=timeout, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        if text_encoder:
            wanted = _pick_text_encoder_files(list(sizes))
            required: tuple[str, ...] = TEXT_ENCODER_FILES
        else:
            wanted = pick_files(engine, list(sizes))
            required = required_files(engine)
        missing = [f for f in required if f not in sizes]
        if text_encoder and not any(w in sizes for w in TEXT_ENCODER_WEIGHTS):
            missing.append(" or ".join(TEXT_ENCODER_WEIGHTS))
        if missing:
            raise ModelNotFoundError(not_found_message(
                repo_id, f"the hub's {repo_id} lacks {', '.join(missing)}", engine))
        total = sum(sizes[f] for f in wanted)
        if log is not None:
            log(f"downloading {repo_id} ({len(wanted)} files, {total / 1e6:,.1f} MB) from "
                f"{endpoint} into {cache}")
        paths = [Path(hf_hub_download(repo_id, f, cache_dir=cache, endpoint=endpoint,
                                      etag_timeout=timeout, token=token)) for f in wanted]
    except ModelNotFoundError:
        raise
    except Exception as e:  # network and HTTP errors come in many types; all mean the same here
        status = _http_status(e)
        if status in (401, 403) or type(e).__name__ == "GatedRepoError":
            raise ModelNotFoundError(gated_message(repo_id, status)) from None
        raise ModelNotFoundError(not_found_message(
            repo_id, f"the Hugging Face hub at {endpoint} could not be reached or failed "
                     f"({_first_line(e)})", engine)) from None
    first = paths[0]
    return first.parents[len(Path(wanted[0]).parts) - 1]


def locate(ref: ModelRef, timeout_s: float | None = None, log: Log | None = None) -> Path:
    """The local directory with the engine's files, downloading from the hub if needed.

    For a hub AudioGen the text encoder (``t5-large``) is made available too, so the first
    render on a connected machine downloads both (Stable Audio's text encoder is inside its
    own repository). Checks the cache first and fails fast when offline or when the hub cannot
    be reached (audiocraft alone would retry and then raise a traceback).
    """
    if ref.local_dir is not None:
        return ref.local_dir
    model_dir = cached_model_dir(ref)
    encoder = TEXT_ENCODERS.get(ref.engine)
    has_encoder = encoder is None or text_encoder_dir(encoder) is not None
    if model_dir is not None and has_encoder:
        return model_dir
    if offline():
        if model_dir is None:
            raise ModelNotFoundError(not_found_message(
                ref.name, "HF_HUB_OFFLINE is set and the weights are not in the cache",
                ref.engine))
        raise ModelNotFoundError(not_found_message(
            str(encoder), f"HF_HUB_OFFLINE is set and {ref.name}'s text encoder "
                          f"'{encoder}' is not in the cache"))
    if model_dir is None:
        model_dir = download(ref.name, log=log, timeout_s=timeout_s, engine=ref.engine)
    if encoder is not None and not has_encoder:
        download(encoder, text_encoder=True, log=log, timeout_s=timeout_s)
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
