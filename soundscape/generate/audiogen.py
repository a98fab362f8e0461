"""Generator stage, the only torch/audiocraft importer: AudioGen takes in seeded batches.

Input: ``TakeRequest`` values. Output: float32 mono takes ``(1, frames)`` at the model's rate.

Reproducibility: audiocraft samples every token from torch's global RNG, so a take depends on
what else is in its batch. While generating, audiocraft's ``multinomial`` is swapped for one that
draws row *i* from a ``torch.Generator`` seeded with request *i*'s seed. A take is then the same
alone or batched (on the same device), provided its conditioning has the same shape, which is why
batches also group by the tokenised prompt length (padding would change cross-attention).
"""

from __future__ import annotations

import contextlib
import re
import time
import typing
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import GeneratorError, ModelNotFoundError
from . import TakeRequest, audiogen_request, quiet_xformers
from .device import pick_device
from .engines import AUDIOGEN_SPEC
from .models import (
    COMPRESSION_FILE,
    LM_FILE,
    Log,
    ModelRef,
    ensure_text_encoder,
    hub_cache_dir,
    locate,
)
from .precision import TORCH_DTYPES, choose_precision

quiet_xformers()
try:
    import torch
    from audiocraft.models import builders
    from audiocraft.models.audiogen import AudioGen
    from audiocraft.models.loaders import _delete_param
    from audiocraft.utils import utils as ac_utils
    from omegaconf import DictConfig, ListConfig, OmegaConf
except ImportError as _e:  # pragma: no cover - exercised only without audiocraft installed
    raise GeneratorError(
        f"audiocraft could not be imported ({_e}); generation needs it. Install soundscape "
        f"with its dependencies ('uv sync' in the repository), or use only file: elements"
    ) from None

ProgressFn = Callable[[str, int, int], None]
__all__ = ["Generator", "load_model", "pick_device"]


def checkpoint_globals() -> list[typing.Any]:
    """The only non-tensor types the published checkpoints pickle, proved on the hub replica
    (``torch.serialization.get_unsafe_globals_in_checkpoint``): ``xp.cfg`` is an omegaconf 2.3
    ``DictConfig`` (audiocraft PR #534), whose metadata holds a ``collections.defaultdict``.
    The YAML-text export layout needs none of them."""
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any,
            defaultdict, dict, list, int]


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` and exactly ``checkpoint_globals()`` allowed.

    Raises:
        ModelNotFoundError: the file is missing.
        GeneratorError: the file pickles any other type (named in the message) or is damaged.
    """
    try:
        with torch.serialization.safe_globals(checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ModelNotFoundError(f"checkpoint file missing: {e.filename}") from None
    except Exception as e:
        found = _UNSUPPORTED.search(str(e))
        if found:
            raise GeneratorError(
                f"{path}: the checkpoint pickles the type {found.group(1)}, which soundscape "
                f"does not load (only tensors, omegaconf configs and plain containers are "
                f"allowed, so a checkpoint cannot run code); re-export it with audiocraft's "
                f"export functions or use the published files") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GeneratorError(f"cannot load the checkpoint {path}: {first}") from None


@contextlib.contextmanager
def _hub_cache_only() -> Iterator[None]:
    """Make transformers read T5 from the cache soundscape checked (the environment's now, not
    the one huggingface_hub saw at import), without asking the hub about cached files."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE
    constants.HF_HUB_OFFLINE = True
    constants.HF_HUB_CACHE = str(hub_cache_dir())
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" of T5 on every render is noise
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = old
        if bars:
            hf_logging.enable_progress_bar()


def load_model(ref: ModelRef, device: str = "auto", log: Log | None = None,
               precision: str = "auto") -> AudioGen:
    """Load AudioGen from a local export directory or the hub/HF cache (see ``models.locate``).

    On MPS, EnCodec stays on the CPU (audiocraft PR #612: some of its ops are missing on MPS).
    The LM is loaded at ``precision`` (see ``precision.choose_precision``); EnCodec stays float32.
    """
    device = pick_device(device)
    precision = choose_precision(precision, device)
    directory = locate(ref, log=log)
    lm_pkg = load_checkpoint(directory / LM_FILE)
    comp_pkg = load_checkpoint(directory / COMPRESSION_FILE)
    # A pickled DictConfig (the published files) or YAML text (audiocraft's current exporter)
    lm_cfg = OmegaConf.create(lm_pkg["xp.cfg"])
    for cond in (lm_cfg.get("conditioners") or {}).values():
        if isinstance(cond, DictConfig) and cond.get("model") == "t5":
            ensure_text_encoder(cond.t5.name, ref.name, log)
    comp_device = "cpu" if device == "mps" else device
    if "pretrained" in comp_pkg:
        raise GeneratorError("compression checkpoints that point at another pretrained model "
                             "are not supported; export the EnCodec weights into the file")
    comp_cfg = OmegaConf.create(comp_pkg["xp.cfg"])
    comp_cfg.device = comp_device
    lm_cfg.device = device
    lm_cfg.dtype = TORCH_DTYPES[precision]
    for name in ("conditioners.self_wav.chroma_stem.cache_path",
                 "conditioners.args.merge_text_conditions_p", "conditioners.args.drop_desc_p"):
        _delete_param(lm_cfg, name)
    with _hub_cache_only(), warnings.catch_warnings():
        # EnCodec's weight_norm deprecation: audiocraft's code, nothing a user can act on
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        compression = builders.get_compression_model(comp_cfg)
        compression.load_state_dict(comp_pkg["best_state"])
        lm = builders.get_lm_model(lm_cfg)
        lm.load_state_dict(lm_pkg["best_state"])
    cast_lm(lm, precision)
    compression.eval()
    lm.eval()
    lm.cfg = lm_cfg
    return AudioGen(ref.name, compression, lm)


def cast_lm(lm: typing.Any, precision: str) -> None:
    """Put every LM weight (embeddings, output heads and the text conditioner's projection
    too, which audiocraft's builder leaves float32) at ``precision``: fp32, bf16 or fp16."""
    lm.to(getattr(torch, TORCH_DTYPES[precision]))


def lm_precision(lm: typing.Any) -> str:
    """The precision name of the LM's transformer weights."""
    dtype = next(iter(lm.transformer.parameters())).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _fast_decoder(lm: typing.Any, loop: str) -> typing.Any:
    from .decode import FastDecoder, unsupported

    if loop not in ("auto", "fast", "stock"):
        raise GeneratorError(f"unknown decoding loop {loop!r}; use auto, fast or stock")
    if loop == "stock":
        return None
    reason = unsupported(lm)
    if reason is not None:
        if loop == "fast":
            raise GeneratorError(f"the fast decoding loop does not support this model "
                                 f"({reason}); use loop='auto' or 'stock'")
        return None
    return FastDecoder(lm)


@contextlib.contextmanager
def per_row_sampling(seeds: list[int], device: str) -> Iterator[None]:
    """Make audiocraft draw each batch row from its own seeded generator."""
    gen_device = "cpu" if device == "mps" else device
    generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
    original = ac_utils.multinomial

    def multinomial(probs: torch.Tensor, num_samples: int, replacement: bool = False, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        if probs.shape[0] != len(generators):
            # Never fall back to the global RNG: the take would silently depend on its batch
            raise GeneratorError(
                f"internal error: the sampler got {probs.shape[0]} rows for {len(generators)} "
                f"seeded takes, so the takes would not be reproducible; please report this "
                f"with the scene file")
        rows = []
        for row, gen in zip(probs, generators, strict=True):
            flat = row.reshape(-1, row.shape[-1])
            if flat.device.type != gen_device:
                flat = flat.to(gen_device)
            out = torch.multinomial(flat, num_samples, replacement, generator=gen)
            rows.append(out.to(probs.device).reshape(*row.shape[:-1], -1))
        return torch.stack(rows)

    ac_utils.multinomial = multinomial  # type: ignore[assignment]
    try:
        yield
    finally:
        ac_utils.multinomial = original


def _shape_of(value: object) -> object:
    """Tensor shapes inside conditioner outputs: tuples (lookup table), mappings (T5's
    ``BatchEncoding``) and tensors, as a hashable value."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, Mapping):
        return tuple((str(k), _shape_of(v)) for k, v in sorted(value.items()))
    if isinstance(value, tuple | list):
        return tuple(_shape_of(v) for v in value)
    return None


class Generator:
    """AudioGen with seeds, batching and out-of-memory back-off.

    Args:
        ref: the model (hub id or local directory).
        device: auto, cuda, mps or cpu.
        max_batch: most takes generated in one call.
        progress: called as ``progress(label, step, total)`` while a batch generates.
        model: an ``AudioGen`` already built (benchmarks); ``ref`` then only names it, and
            ``precision`` is the one its LM already has.
        precision: auto, fp32, bf16 or fp16 (see ``precision.choose_precision``).
        loop: ``fast`` (``decode.FastDecoder``), ``stock`` (audiocraft's own loop) or ``auto``
            (fast where the model's architecture allows it).

    ``device`` and ``precision`` say what the takes were actually generated with (the
    manifest records both).
        log: where download notes go (the first render on a connected machine).
    """

    spec = AUDIOGEN_SPEC

    def __init__(self, ref: ModelRef, device: str = "auto", max_batch: int = 8,
                 progress: ProgressFn | None = None, model: AudioGen | None = None,
                 log: Log | None = None, precision: str = "auto", loop: str = "auto") -> None:
        self.ref = ref
        self.model = model if model is not None else load_model(ref, device, log, precision)
        self.device = str(self.model.device.type)
        self.precision = lm_precision(self.model.lm)
        self.max_batch = max(1, max_batch)
        self.progress = progress
        self.notes: list[str] = []
        self.decoder = _fast_decoder(self.model.lm, loop)
        self.loop = "stock" if self.decoder is None else "fast"

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def measure_cost(self, seconds: float = 0.4) -> float:
        """Seconds of compute per second of audio at batch 1, from one short probe take.

        The LM's decoding steps are nearly all of the cost; their median time (the first two
        steps, which warm up, left out) times the model's frame rate is the figure.
        """
        stamps: list[float] = []
        saved, self.progress = self.progress, lambda label, step, total: stamps.append(
            time.perf_counter())
        try:
            self._generate_batch([audiogen_request(self.ref.identity, "probe", seconds, 1.0,
                                                   250, 0.0, 3.0, seconds, 0)])
        finally:
            self.progress = saved
            self.model.set_custom_progress_callback(None)
        steps = sorted(b - a for a, b in zip(stamps[2:], stamps[3:], strict=False))
        return steps[len(steps) // 2] * float(self.model.frame_rate)

    def _prompt_shape(self, prompt: str) -> object:
        """The shapes of the prompt's tokenised conditioning. T5 pads every prompt of a batch
        to the longest and audiocraft's cross-attention has no padding mask, so only prompts
        of equal shape (token count) may share a batch."""
        provider = self.model.lm.condition_provider
        from audiocraft.modules.conditioners import ConditioningAttributes

        tokens = provider.tokenize([ConditioningAttributes(text={"description": prompt})])
        return _shape_of(tokens)

    def plan_batches(self, requests: list[TakeRequest]) -> list[list[int]]:
        """Indices of ``requests`` grouped into batches of equal settings and prompt shape."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.batch_key(), self._prompt_shape(r.prompt)), []).append(i)
        batches = []
        for idx in groups.values():
            for k in range(0, len(idx), self.max_batch):
                batches.append(idx[k:k + self.max_batch])
        return batches

    def generate(self, requests: list[TakeRequest],
                 on_batch: Callable[[list[TakeRequest], list[np.ndarray], float], None]
                 | None = None) -> list[np.ndarray]:
        """Generate every request; ``on_batch(requests, takes, seconds)`` is called after each
        batch so callers can store finished takes before the next batch starts."""
        results: list[np.ndarray | None] = [None] * len(requests)
        for batch in self.plan_batches(requests):
            reqs = [requests[i] for i in batch]
            t0 = time.perf_counter()
            takes = self._generate_with_backoff(reqs)
            elapsed = time.perf_counter() - t0
            for i, take in zip(batch, takes, strict=True):
                results[i] = take
            if on_batch is not None:
                on_batch(reqs, takes, elapsed)
        return [r for r in results if r is not None]

    def _generate_with_backoff(self, reqs: list[TakeRequest]) -> list[np.ndarray]:
        try:
            return self._generate_batch(reqs)
        except torch.cuda.OutOfMemoryError:
            if self.device == "cuda":
                torch.cuda.empty_cache()
            if len(reqs) == 1:
                raise GeneratorError(
                    f"out of GPU memory generating one {reqs[0].duration_s:g} s take; use a "
                    f"shorter take duration (loop it), --device cpu, or free GPU memory") from None
            half = len(reqs) // 2
            self.max_batch = max(1, half)
            self.notes.append(f"out of GPU memory at batch {len(reqs)}; retrying with {half}")
            return self._generate_with_backoff(reqs[:half]) + \
                self._generate_with_backoff(reqs[half:])

    def _generate_batch(self, reqs: list[TakeRequest]) -> list[np.ndarray]:
        r0 = reqs[0]
        s: dict[str, typing.Any] = r0.settings
        m = self.model
        stride = float(s["extend_stride"])  # type: ignore[arg-type]
        if stride >= m.max_duration:
            stride = m.max_duration / 2
        m.set_generation_params(use_sampling=True, top_k=min(int(s["top_k"]), m.lm.card),
                                top_p=s["top_p"], temperature=s["temperature"],
                                duration=r0.duration_s, cfg_coef=s["cfg_coef"],
                                extend_stride=stride)
        label = f"{len(reqs)} take(s) of {r0.duration_s:g} s"
        if self.progress is not None:
            progress = self.progress

            def callback(step: int, total: int) -> None:
                progress(label, step, total)

            m.set_custom_progress_callback(callback)
        with per_row_sampling([r.seed for r in reqs], self.device):
            attributes, _ = m._prepare_tokens_and_attributes([r.prompt for r in reqs], None)
            if self.decoder is not None:
                from .decode import generate_tokens

                tokens = generate_tokens(m, self.decoder, attributes, m._progress_callback
                                         if self.progress is not None else None)
                self.notes.extend(n for n in self.decoder.notes if n not in self.notes)
            else:
                tokens = m._generate_tokens(attributes, None, progress=self.progress is not None)
        frames = int(round(r0.duration_s * m.sample_rate))
        out = []
        comp_device = next(iter(m.compression_model.parameters())).device
        for i in range(len(reqs)):
            # Decode row by row: EnCodec's batched convolutions differ from single-row ones in
            # the last bits, and a take must not depend on its batch-mates.
            wav = m.generate_audio(tokens[i:i + 1].to(comp_device))
            row = wav.detach().float().cpu().numpy()[0, :1, :]
            take = row[:, :frames]
            if take.shape[1] < frames:
                take = np.pad(take, ((0, 0), (0, frames - take.shape[1])))
            out.append(np.ascontiguousarray(take, dtype=np.float32))
        return out

