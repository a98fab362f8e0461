"""Fixtures and helpers shared by the tests: the tiny model, the shipped renders, an isolated
cache per test, and small helpers (``wav``, ``run_cli``, ``manifest``, ``mtimes``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


@pytest.fixture(autouse=True)
def _handoff_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No disk is remembered slow from another test (``_Shifted._slow_until``): a test that
    fakes a slow handoff would end the handoff in the tests after it."""
    from soundscape.audio_io import _Shifted

    monkeypatch.setattr(_Shifted, "_slow_until", {})


def wav(path: Path, audio: np.ndarray, sr: int) -> Path:
    """Write a 32-bit float wav (exact samples) for file: elements."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    return write_audio(path, a, sr, bit_depth=32)


def env_without_pytest() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


def run_cli(*args: str) -> tuple[int, str]:
    """Run the CLI in-process: its exit code and everything it printed."""
    from typer.testing import CliRunner

    from soundscape.cli import app

    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def manifest(out: Path, *parts: str) -> dict[str, Any]:
    """The manifest JSON of the render folder ``out/<parts...>``."""
    data: dict[str, Any] = json.loads(out.joinpath(*parts, "manifest.json").read_text())
    return data


def mtimes(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (ns): what a render rewrote."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}
