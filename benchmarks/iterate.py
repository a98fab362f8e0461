"""The iteration loop: a full render, a re-render with nothing changed, a one-element volume edit.

    uv run python benchmarks/iterate.py [--minutes 10] [--elements 12] [--repeat 2] [--tmp DIR]

Builds the same 12-element stereo 48 kHz scene of synthetic takes (with effects) as
benchmarks/mix.py, renders it once, renders it again unchanged, then changes one element's
volume and renders again. Prints the three wall times and the two re-renders as ratios to the
full render (a ratio of 0.01 is 100x faster), and which files each re-render wrote. Each
render runs in a fresh Python process through the command line, as a user runs it, so the
times include start-up and imports. Each is timed ``--repeat`` times (the full render into
fresh folders, the edit changing the volume again each time) and the best counts, as timeit
does: on this virtual machine a run is slowed now and then by its host (0.25 s of a 1 s edit
in three of fifteen single runs), never sped up. The processes find soundscape's modules
compiled, as an installed package has them (its __pycache__ folders, which the benchmark fills
first): this machine's environment may set PYTHONDONTWRITEBYTECODE, which would make each of
them compile every one of soundscape's modules again (about 60 ms, most of it in the edit's
serial part). The third-party packages' are compiled already, as installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mix import make_scene  # noqa: E402  (the mixing benchmark's scene)


def files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def compile_soundscape() -> None:
    """Compile soundscape's modules into their __pycache__ folders, as an installed package
    has them, whatever this shell's PYTHONDONTWRITEBYTECODE says (compileall writes them
    anyway); the renders read them as any import does."""
    import soundscape

    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    str(Path(soundscape.__file__).parent)], check=True)


def run(scene: Path, out: Path) -> float:
    os.sync()  # the earlier render's writeback is not timed against this one
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "soundscape", "render", str(scene), "--out", str(out)],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def times(samples: list[float]) -> str:
    """The best of the samples (as timeit reports), and all of them."""
    return f"{min(samples):7.2f} s  ({', '.join(f'{t:.2f}' for t in samples)})"


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--elements", type=int, default=12)
    p.add_argument("--repeat", type=int, default=2,
                   help="times each render is timed; the best counts, for the full render and "
                        "the re-renders alike (this machine's noise is one-sided: a slow run "
                        "is the host's, never a fast one)")
    p.add_argument("--tmp", help="where the scene and renders go (default: the temp folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        scene = make_scene(root / "scene", args.minutes, args.elements)
        out = root / "out"
        compile_soundscape()
        full = [run(scene, out)]
        for k in range(1, args.repeat):  # into a folder of its own, removed untimed
            full.append(run(scene, root / f"full{k}"))
            shutil.rmtree(root / f"full{k}")
        before = files(out)
        same = [run(scene, out) for _ in range(args.repeat)]
        same_written = [p for p, t in files(out).items() if before.get(p) != t]
        text = scene.read_text()
        edit: list[float] = []
        edit_written: list[str] = []
        for k in range(args.repeat):  # e1 at -3 dB, -6 dB, ...: one volume changed each time
            scene.write_text(text.replace("  e1: {", f"  e1: {{volume: {-3 * (k + 1)} dB, ", 1))
            before = files(out)
            edit.append(run(scene, out))
            edit_written = edit_written or sorted(
                str(p.relative_to(out)) for p, t in files(out).items() if before.get(p) != t)
        t_full, t_same, t_edit = min(full), min(same), min(edit)
        print(f"{args.elements} elements, {args.minutes:g} min stereo 48 kHz, best of "
              f"{args.repeat}")
        print(f"full render:          {times(full)}")
        print(f"no change:            {times(same)}  ratio {t_same / t_full:.3f}  "
              f"files written: {len(same_written)}")
        print(f"one volume edit:      {times(edit)}  ratio {t_edit / t_full:.3f}  "
              f"files written: {', '.join(edit_written)}")
        print(f"speedup vs full render: no change {t_full / t_same:.1f}x, "
              f"one volume edit {t_full / t_edit:.1f}x")
