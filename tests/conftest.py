from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from soundscape.audio_io import write_audio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random AudioGen checkpoint in audiocraft's export layout (imports audiocraft)."""
    import torch

    from soundscape.generate.dev.tiny import write_tiny_model

    # Tiny models cost only per-op overhead; a second thread adds OpenMP hand-offs that take
    # 10-50x longer than the work on a shared machine (measured: 0.27 s vs 12.9 s per take).
    torch.set_num_threads(1)
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


SHIPPED = sorted(p.name for p in (ROOT / "scenes").glob("*.yaml"))


@pytest.fixture(scope="session")
def shipped_renders(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) \
        -> dict[str, list[Path]]:
    """Every scene in scenes/ with all its variants, rendered at full length with the tiny
    model, once per test session: scene file name -> its output folders (base first)."""
    from soundscape.pipelines.render import render

    root = tmp_path_factory.mktemp("shipped")
    return {name: [r.directory for r in render(ROOT / "scenes" / name, all_variants=True,
                                                model=str(tiny_model), out=root / "r",
                                                cache_dir=root / "cache")]
            for name in SHIPPED}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SOUNDSCAPE_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return cache


def wav(path: Path, audio: np.ndarray, sr: int) -> Path:
    """Write a 32-bit float wav (exact samples) for file: elements."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    return write_audio(path, a, sr, bit_depth=32)


def env_without_pytest() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
