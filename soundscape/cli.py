"""Command line: a thin Typer layer over the library. Errors print ``Error: ...`` and exit 1."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .errors import SceneError, SoundscapeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Compose layered soundscapes from YAML scenes with AudioGen.")
dev = typer.Typer(help="Developer tools.", no_args_is_help=True)
app.add_typer(dev, name="dev")


def _err(message: str) -> None:
    for line in message.splitlines():
        typer.echo(f"Error: {line}", err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"soundscape {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Compose layered soundscapes from YAML scenes with AudioGen."""


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except SoundscapeError as e:
        _err(str(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted; finished takes are cached and no partial file was left.",
                   err=True)
        raise typer.Exit(130) from None


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False,
                  disable=not console.is_terminal) as progress:
        tasks: dict[str, Any] = {}

        def update(label: str, step: int, total: int) -> None:
            if label not in tasks or progress.tasks[tasks[label]].finished:
                tasks[label] = progress.add_task(label, total=total, rate="")
            task_id = tasks[label]
            progress.update(task_id, completed=step, total=max(total, step))
            speed = progress.tasks[task_id].speed
            progress.update(task_id, rate=f"{speed:.1f} steps/s" if speed else "")

        yield update


@app.command()
def validate(scenes: Annotated[list[Path], typer.Argument(help="Scene files.")]) -> None:
    """Check scene files and all their variants; one line per scene and variant."""
    from .scene import load_all

    failed = False
    for path in scenes:
        try:
            for s in load_all(path):
                prompts = sum(1 for e in s.elements.values() if e.prompt)
                typer.echo(f"ok  {path}  {s.variant or '(base)'}: {len(s.elements)} elements "
                           f"({prompts} generated), {s.duration:g} s, {s.sample_rate} Hz, "
                           f"{s.channels} ch")
        except SceneError as e:
            failed = True
            for line in e.lines:
                typer.echo(f"Error: {line}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def schema(out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to a file.")]
           = None) -> None:
    """Print the JSON Schema of the scene format (for editors: yaml-language-server)."""
    from .scene import json_schema

    text = json.dumps(json_schema(), indent=2)
    if out is None:
        typer.echo(text)
    else:
        from .audio_io import atomic_write_text

        atomic_write_text(out, text + "\n")
        typer.echo(f"wrote {out}", err=True)


@app.command()
def plan(scene: Path, variant: Annotated[str | None, typer.Option(help="Variant name.")] = None,
         ) -> None:
    """Print the arrangement as a timeline (no audio is generated)."""
    from .arrange import arrange, describe
    from .audio_io import read_audio
    from .scene import load_scene

    with _user_errors():
        s = load_scene(scene, variant)
        lengths = {}
        for name, e in s.elements.items():
            if e.file:
                a, sr = read_audio(e.file)
                lengths[name] = a.shape[1] / sr
            else:
                lengths[name] = e.duration or s.defaults.duration
        arr = arrange(s, lengths)
        typer.echo(f"{s.label}: " + "\n".join(describe(arr)))
        for w in arr.warnings:
            typer.echo(f"warning: {w}", err=True)


Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Model = Annotated[str | None, typer.Option("--model", help="Hub id or checkpoint directory "
                                           "(overrides the scene).")]
Device = Annotated[str, typer.Option("--device", help="auto, cuda, mps or cpu.")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Take cache (default: "
                                               "$SOUNDSCAPE_CACHE_DIR or the user cache).")]
Batch = Annotated[int, typer.Option("--max-batch", min=1, help="Most takes per batch.")]


@app.command()
def render(
    scenes: Annotated[list[Path], typer.Argument(help="Scene files.")],
    variant: Annotated[str | None, typer.Option(help="Render this variant.")] = None,
    all_variants: Annotated[bool, typer.Option("--all-variants", help="Render the base and "
                                               "every variant.")] = False,
    out: Out = Path("renders"),
    fmt: Annotated[str, typer.Option("--format", help="wav, flac, ogg or mp3.")] = "wav",
    bit_depth: Annotated[int | None, typer.Option(help="16, 24 or 32 (float) for wav.")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Regenerate and rewrite only "
                                                   "this element (repeatable).")] = None,
    model: Model = None, device: Device = "auto", cache_dir: CacheDir = None,
    max_batch: Batch = 8,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Processes that "
                                             "render stems (default: one per CPU core for "
                                             "long scenes).")] = None,
) -> None:
    """Generate missing takes, mix, master and write mix, stems and manifest."""
    from rich.console import Console
    from rich.table import Table

    from .render import render as do_render

    if variant and all_variants:
        _err("give --variant NAME or --all-variants, not both")
        raise typer.Exit(1)
    if bit_depth is not None and bit_depth not in (16, 24, 32):
        _err(f"--bit-depth {bit_depth} is not supported; use 16, 24 or 32")
        raise typer.Exit(1)
    with _user_errors(), _progress() as progress:
        results = do_render(scenes, variant=variant, all_variants=all_variants, out=out,
                            fmt=fmt.lower(), bit_depth=bit_depth, only=only, model=model,
                            device=device, cache_dir=cache_dir, max_batch=max_batch, log=_log,
                            progress=progress, jobs=jobs)
    console = Console()
    for r in results:
        for w in r.warnings:
            _log(f"warning: {r.scene}{'/' + r.variant if r.variant else ''}: {w}")
        table = Table(title=f"{r.scene}{' / ' + r.variant if r.variant else ''}: "
                            f"{r.generated} generated, {r.cached} cached")
        for col in ("element", "takes", "LUFS", "dBTP", "stem"):
            table.add_column(col)
        for e in r.elements:
            takes = e["takes"]
            status = "file" if e["source"] == "file" else (
                f"{sum(t['generated'] for t in takes)} generated, "
                f"{sum(not t['generated'] for t in takes)} cached")
            table.add_row(e["element"], status, _fmt(e["loudness_lufs"]),
                          _fmt(e["true_peak_dbtp"]), e["stem"] or "(unchanged)")
        table.add_row("mix", "", _fmt(r.mix_lufs), _fmt(r.mix_true_peak_dbtp), str(r.mix))
        console.print(table)
        typer.echo(f"wrote {r.directory}")


def _fmt(x: float | None) -> str:
    return "-inf" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.1f}"


@app.command()
def takes(
    scene: Path, element: str,
    n: Annotated[int, typer.Option("-n", min=1, max=64, help="How many takes.")] = 4,
    keep: Annotated[int | None, typer.Option("--keep", help="Write this seed into the scene "
                                             "file (comments are kept).")] = None,
    variant: Annotated[str | None, typer.Option(help="Variant name.")] = None,
    out: Out = Path("renders"), model: Model = None, device: Device = "auto",
    cache_dir: CacheDir = None, max_batch: Batch = 8,
) -> None:
    """Audition N takes of one element with distinct seeds; keep one with --keep SEED."""
    from .keep import keep_seed
    from .render import audition

    with _user_errors():
        if keep is not None:
            from .scene import load_scene

            if element not in load_scene(scene).elements:
                raise SoundscapeError(f"{scene}: no element '{element}'")
            keep_seed(scene, element, keep)
            typer.echo(f"{scene}: elements.{element}.seed = {keep}")
            return
        with _progress() as progress:
            files = audition(scene, element, n, variant=variant, out=out, model=model,
                             device=device, cache_dir=cache_dir, max_batch=max_batch, log=_log,
                             progress=progress)
        for seed, path in files:
            typer.echo(f"seed {seed}: {path}")
        typer.echo(f"keep one: soundscape takes {scene} {element} --keep SEED")


@app.command()
def sfx(
    sfx_list: Annotated[Path, typer.Argument(metavar="LIST", help="SFX list (YAML or JSON).")],
    out: Out = Path("renders"), model: Model = None, device: Device = "auto",
    cache_dir: CacheDir = None, max_batch: Batch = 8,
    fmt: Annotated[str, typer.Option("--format", help="wav, flac, ogg or mp3.")] = "wav",
) -> None:
    """Render a game's SFX list: N trimmed, loudness-normalised variations per sound."""
    from .sfx import render_sfx

    with _user_errors(), _progress() as progress:
        manifest = render_sfx(sfx_list, out, model=model, device=device, cache_dir=cache_dir,
                              fmt=fmt, max_batch=max_batch, log=_log, progress=progress)
    data = json.loads(manifest.read_text())
    gen = sum(v["generated"] for v in data["variations"])
    typer.echo(f"wrote {len(data['variations'])} variations ({gen} generated) and {manifest}")


@app.command("open")
def open_page(
    scene: Annotated[str, typer.Argument(help="Scene file, or the scene's name.")],
    variant: Annotated[str | None, typer.Option(help="Open this variant's page.")] = None,
    out: Out = Path("renders"),
) -> None:
    """Open a render's audition page (index.html) in the web browser."""
    import webbrowser

    from .page import find_page

    with _user_errors():
        name = scene
        if scene.endswith((".yaml", ".yml")) or Path(scene).is_file():
            from .scene import load_scene

            name = load_scene(scene, variant).name
        page = find_page(out, name, variant)
        url = page.resolve().as_uri()
        if not webbrowser.open(url):
            raise SoundscapeError(f"no web browser could be started; open {url} yourself")
    typer.echo(f"opened {url}")


@dev.command("tiny-model")
def tiny_model(directory: Path, seed: Annotated[int, typer.Option(help="Weight seed.")] = 0
               ) -> None:
    """Write a tiny random AudioGen checkpoint (audiocraft export layout) for offline runs."""
    with _user_errors():
        from .generate.tiny import write_tiny_model

        write_tiny_model(directory, seed)
    typer.echo(f"wrote a tiny random AudioGen checkpoint to {directory}; use --model {directory}")


def main() -> None:
    try:
        app()
    except SoundscapeError as e:  # pragma: no cover - safety net
        _err(str(e))
        sys.exit(1)
