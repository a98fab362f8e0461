"""Generator stage: what generating costs on this machine, measured and remembered.

Input: a model identity, device and precision; a measurement (``audiogen.Generator.measure_cost``)
when none is stored yet. Output: seconds of compute per second of audio (batch 1), and the line
printed before generating. Measurements are kept in ``<cache dir>/cost.json``, keyed by machine
(host, CPU model, core count), model, device and precision. No torch import here: the line for a
stored measurement is printed before the model loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

from ..audio_io import atomic_write_text

COST_FILE = "cost.json"


def machine_id() -> str:
    """A short stable id of this machine: host name, CPU model and core count."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    text = f"{platform.node()}|{cpu}|{os.cpu_count()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _path(root: str | Path | None) -> Path:
    if root is None:
        from ..dirs import default_cache_dir

        root = default_cache_dir()
    return Path(root) / COST_FILE


def _key(model: str, device: str, precision: str) -> str:
    return f"{machine_id()}|{model}|{device}|{precision}"


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_cost(model: str, device: str, precision: str,
                root: str | Path | None = None) -> float | None:
    """Stored seconds of compute per second of audio at batch 1, or None if never measured."""
    entry = _load(_path(root)).get(_key(model, device, precision))
    if isinstance(entry, dict) and isinstance(entry.get("s_per_audio_s"), int | float) \
            and entry["s_per_audio_s"] > 0:
        return float(entry["s_per_audio_s"])
    return None


def store_cost(model: str, device: str, precision: str, s_per_audio_s: float,
               root: str | Path | None = None) -> None:
    """Remember a measurement (atomically; other entries are kept)."""
    path = _path(root)
    data = _load(path)
    data[_key(model, device, precision)] = {
        "s_per_audio_s": round(s_per_audio_s, 4), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def cost_line(n: int, seconds: float, device: str, precision: str,
              s_per_audio_s: float | None, engine: str | None = None) -> str:
    """The line printed before generating ``n`` takes, ``seconds`` of audio in all."""
    line = f"generating {n} take(s), {seconds:.1f} s of audio, on {device} at {precision}"
    if engine is not None and engine != "AudioGen":
        line += f" with {engine}"
    if s_per_audio_s is None:
        return line
    est = seconds * s_per_audio_s
    when = f"{est / 60:.0f} min" if est >= 90 else f"{est:.0f} s"
    line += (f"; measured here: {s_per_audio_s:.2g} s of compute per second of audio, so "
             f"about {when} (less when takes share a batch)")
    if device == "cpu" and s_per_audio_s > 5:
        line += "; a GPU is much faster"
    return line
