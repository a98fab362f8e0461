"""Diagnostics: what a render will use and cost on this machine, one screen.

Input: the model a render would use (hub id or checkpoint directory) and the take cache folder.
Output: ``Check`` rows (name, status, detail, fix) for torch and the device, the model's weights
(AudioGen and T5, or a Stable Audio model), each engine's licence, gate, cache and measured cost,
the take cache, free disk and the hub's online/offline state. Reads the environment and
the disk only; the one network request is a short probe of the hub when it is not offline.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import ModelNotFoundError
from ..generate.models import (
    COMPRESSION_FILE,
    LM_FILE,
    TEXT_ENCODER,
    ModelRef,
    cached_hub_dir,
    hub_cache_dir,
    hub_endpoint,
    offline,
    resolve,
    text_encoder_dir,
)

OK, WARN, MISSING = "ok", "warning", "MISSING"
CPU_S_PER_AUDIO_S = 57.0  # stock audiocraft, AudioGen-medium shape, float32, 2-core CPU (measured)
WEIGHTS_GB = 6.8  # facebook/audiogen-medium (3.6 + 0.2 GB) and t5-large's safetensors (3 GB)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or MISSING
    detail: str
    fix: str | None = None


def _size(path: Path) -> int:
    if not path.is_dir():
        return 0
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _snapshot_bytes(snap: Path) -> int:
    return sum(p.stat().st_size for p in snap.rglob("*") if p.is_file())


def _cpu_bf16() -> str:
    """Native bf16 arithmetic on this CPU (AVX-512 BF16 or AMX on x86, Apple silicon)."""
    if platform.machine() == "arm64" and platform.system() == "Darwin":
        return "yes"
    from ..generate.precision import cpu_flags, cpu_has_native_bf16

    if not cpu_flags():
        return "unknown"
    return "yes" if cpu_has_native_bf16() else "no (emulated, slow)"


def _cost_key(model: str) -> str | None:
    """The key a render remembers the model's measured cost by (engine, weights, revision), or
    None while its weights are not here: a replica's figure is never the real model's."""
    from ..takes.run import cost_model

    try:
        ref = resolve(model, Path.cwd())
        revision = ref.revision()
    except (ModelNotFoundError, OSError):
        return None
    return None if revision is None else cost_model(ref, revision)


def _cpu_cost(model: str = "facebook/audiogen-medium") -> str:
    """This machine's measured cost at the precision a render would choose, if measured."""
    from ..generate.cost import cached_cost
    from ..generate.precision import choose_precision

    precision = choose_precision("auto", "cpu")
    key = _cost_key(model)
    cost = None if key is None else cached_cost(key, "cpu", precision)
    if cost is None:
        return (f"at {precision}; not measured here yet (the first generating render times a "
                f"short probe take and remembers it; stock audiocraft in float32 needs about "
                f"{CPU_S_PER_AUDIO_S:.0f} s per second of audio on 2 cores)")
    return f"at {precision}: {cost:.0f} s of compute per second of audio, measured here"


def check_torch() -> Check:
    try:
        import torch
    except ImportError as e:
        return Check("torch", MISSING, f"cannot import torch ({e})",
                     "install soundscape with its dependencies: 'uv sync' in the repository")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
        return Check("torch", OK, f"{torch.__version__}; device cuda: {props.name} "
                     f"({props.total_memory / 2**30:.0f} GiB), bf16 {bf16}; the LM runs in "
                     f"float16, about a minute for the rainy cafe's 50 s of takes")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("torch", OK, f"{torch.__version__}; device mps (Apple GPU), bf16 "
                     f"{'yes' if platform.machine() == 'arm64' else 'unknown'}; EnCodec runs "
                     f"on the CPU (audiocraft PR #612)")
    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = _cpu_bf16()
    return Check("torch", WARN, f"{torch.__version__}; device cpu ({os.cpu_count()} cores, "
                 f"{capability}), bf16 {bf16}; AudioGen-medium {_cpu_cost()}",
                 "a CUDA GPU is about 100x faster; renders whose takes are cached need no "
                 "model at all")


def check_engines() -> list[Check]:
    """Each engine: its weights' licence (commercial or not), whether its hub repository is
    gated, whether it is cached here, and its cost measured here (by engine and revision)."""
    from ..generate.cost import cached_cost
    from ..generate.engines import ENGINES
    from ..generate.models import ModelRef, cached_model_dir
    from ..generate.precision import choose_precision

    precision = choose_precision("auto", "cpu")
    out = []
    for spec in ENGINES.values():
        lic = spec.licence
        use = ("commercial use allowed under US$1M annual revenue" if lic.commercial
               else "non-commercial use only")
        gate = (f"gated: accept the licence at https://huggingface.co/{spec.repo} and log in "
                f"(HF_TOKEN or 'hf auth login')" if spec.gated else "not gated")
        snap = cached_model_dir(ModelRef(spec.repo, None, spec.name))
        here = "cached" if snap is not None else "not in the cache"
        key = _cost_key(spec.repo) if snap is not None else None
        cost = None if key is None else cached_cost(key, "cpu", precision)
        speed = (f"{cost:.2g} s of compute per second of audio at {precision}, measured here"
                 if cost is not None else "speed not measured here")
        short = spec.title.replace("Stable Audio Open", "SAO")
        out.append(Check(f"engine {short}", OK, f"{lic.name}, {use}; {spec.sample_rate} Hz, "
                         f"{'stereo' if spec.channels == 2 else 'mono'}, takes up to "
                         f"{spec.max_take_s:g} s{' (longer ones extended)' if spec.extends else ''}"
                         f"; {spec.repo} {here}, {gate}; {speed}"))
    return out


def check_weights(model: str) -> list[Check]:
    try:
        ref = resolve(model, Path.cwd())
    except ModelNotFoundError as e:
        return [Check("AudioGen weights", MISSING, str(e).split(";")[0])]
    if ref.engine != "audiogen":
        return [_stable_audio_weights(ref)]
    checks = []
    if ref.local_dir is not None:
        checks.append(Check("AudioGen weights", OK, f"local checkpoint {ref.local_dir} "
                            f"({LM_FILE}, {COMPRESSION_FILE})"))
    else:
        snap = cached_hub_dir(ref.name)
        if snap is not None:
            checks.append(Check("AudioGen weights", OK, f"{ref.name} in {snap} "
                                f"({_gb(_snapshot_bytes(snap))})"))
        else:
            checks.append(Check("AudioGen weights", MISSING, f"{ref.name} is not in the "
                                f"Hugging Face cache {hub_cache_dir()}", _fix(ref.name)))
    t5 = text_encoder_dir(TEXT_ENCODER)
    if t5 is not None:
        checks.append(Check("text encoder", OK, f"{TEXT_ENCODER} in {t5} "
                            f"({_gb(_snapshot_bytes(t5))})"))
    elif ref.local_dir is not None:
        checks.append(Check("text encoder", WARN, f"{TEXT_ENCODER} is not in the cache "
                            f"{hub_cache_dir()}; needed if {ref.local_dir} is AudioGen with T5 "
                            f"(the tiny test model is not)", _fix(TEXT_ENCODER)))
    else:
        checks.append(Check("text encoder", MISSING, f"{TEXT_ENCODER} (AudioGen's T5) is not "
                            f"in the Hugging Face cache {hub_cache_dir()}", _fix(TEXT_ENCODER)))
    return checks


def _stable_audio_weights(ref: ModelRef) -> Check:
    from ..generate.models import cached_model_dir

    label = f"{ref.spec.title.replace('Stable Audio Open', 'SAO')} weights"
    if ref.local_dir is not None:
        return Check(label, OK, f"local folder {ref.local_dir} ({ref.spec.title}'s published "
                     f"layout)")
    snap = cached_model_dir(ref)
    if snap is not None:
        return Check(label, OK, f"{ref.name} in {snap} ({_gb(_snapshot_bytes(snap))})")
    return Check(label, MISSING, f"{ref.name} is not in the Hugging Face cache "
                 f"{hub_cache_dir()}", f"accept the licence at https://huggingface.co/"
                 f"{ref.name}, log in (HF_TOKEN or 'hf auth login'), then " + _fix(ref.name))


def _fix(repo: str) -> str:
    if offline():
        return (f"on a connected machine run 'hf download {repo}', copy its cache folder here "
                f"and set HF_HOME to it")
    return (f"on a connected machine run 'hf download {repo}' (or let the first render "
            f"download it: this machine is not offline)")


def check_take_cache(cache_dir: Path | None) -> Check:
    from ..dirs import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    takes = list((root / "takes").glob("*/*.json")) if root.is_dir() else []
    return Check("take cache", OK, f"{root}: {len(takes)} takes, {_gb(_size(root))}")


def check_disk(cache_dir: Path | None, weights_missing: bool) -> Check:
    from ..dirs import default_cache_dir

    places = {"Hugging Face cache": hub_cache_dir(),
              "take cache": Path(cache_dir).expanduser() if cache_dir else default_cache_dir()}
    parts, low = [], False
    for label, p in places.items():
        probe = p
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        parts.append(f"{_gb(free)} free for the {label}")
        low = low or (label == "Hugging Face cache" and weights_missing
                      and free < WEIGHTS_GB * 1e9 * 1.2)
    if low:
        return Check("free disk", WARN, "; ".join(parts),
                     f"the weights need about {WEIGHTS_GB} GB; free space or point HF_HOME "
                     f"at a larger disk")
    return Check("free disk", OK, "; ".join(parts))


def check_hub(timeout_s: float = 3.0) -> Check:
    endpoint = hub_endpoint()
    if offline():
        return Check("hub", OK, "offline (HF_HUB_OFFLINE=1): renders read the Hugging Face "
                     "cache only")
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"),
                               timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except Exception as e:
        return Check("hub", WARN, f"online, but {endpoint} cannot be reached "
                     f"({type(e).__name__})", "a render that needs missing weights will fail; "
                     "connect, or set HF_HUB_OFFLINE=1 and use a copied cache")
    return Check("hub", OK, f"online: {endpoint} answers; the first render downloads missing "
                 f"weights")


def check_xformers() -> Check:
    try:
        version = metadata.version("xformers")
    except metadata.PackageNotFoundError:
        return Check("xformers", MISSING, "not installed; audiocraft imports it",
                     "'uv sync' in the repository")
    return Check("xformers", OK, f"{version}: audiocraft imports its Python parts only; "
                 f"attention runs in torch, so its compiled kernels are not needed")


def report(model: str = "facebook/audiogen-medium", cache_dir: Path | None = None
           ) -> list[Check]:
    """Every check, in the order a render meets them."""
    weights = check_weights(model)
    missing = any(c.status == MISSING for c in weights)
    return [Check("soundscape", OK, f"{__version__} (python {platform.python_version()})"),
            check_torch(), check_xformers(), *weights, *check_engines(), check_hub(),
            check_take_cache(cache_dir), check_disk(cache_dir, missing)]


def format_report(checks: list[Check]) -> list[str]:
    lines = []
    for c in checks:
        lines.append(f"{c.name:<18}{c.status:<9}{c.detail}")
        if c.fix:
            lines.append(f"{'':<27}fix: {c.fix}")
    return lines
