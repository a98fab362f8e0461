"""Command line: a thin Typer layer over the library. Errors print ``Error: ...`` and exit 1."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, CI runners, service managers), raised where the program is, so it
    unwinds and cleans up exactly as Ctrl-C does."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises ``Terminated``; the earlier handler comes back
    after (in the main thread only: signal handlers cannot be set elsewhere)."""
    import signal

    def terminated(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread (an embedding program's worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _user_errors() -> Iterator[None]:
    """The error boundary: a user mistake or a failing dependency or system is one ``Error:``
    line and exit 1, never a traceback (SOUNDSCAPE_DEBUG=1 shows it for a bug report)."""
    try:
        with _sigterm_as_interrupt():
            yield
    except SoundscapeError as e:
        _err(str(e))
        raise typer.Exit(1) from None
    except MemoryError:
        _err("out of memory; shorten the scene, use fewer or shorter elements, or --jobs 1")
        raise typer.Exit(1) from None
    except OSError as e:
        if os.environ.get("SOUNDSCAPE_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        _err(f"{e.strerror or e}{where}; check the path, its permissions and free disk space")
        raise typer.Exit(1) from None
    except (typer.Exit, SystemExit):
        raise
    except Exception as e:
        if os.environ.get("SOUNDSCAPE_DEBUG"):
            raise
        _err(f"unexpected failure: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
             f" (a bug: please report it with the output of SOUNDSCAPE_DEBUG=1)")
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        what, code = ("Terminated", 143) if isinstance(e, Terminated) else ("Interrupted", 130)
        typer.echo(f"{what}; finished takes are cached and no partial file was left.",
                   err=True)
        raise typer.Exit(code) from None


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
               TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False,
                  disable=not console.is_terminal) as progress:
        tasks: dict[str, Any] = {}

        def update(label: str, step: int, total: int) -> None:
            # A bar is its label up to " (": what follows may change as the job runs (the
            # cluster's bar says its actors alive and its takes per minute there).
            key = label.split(" (", 1)[0]
            takes = key.startswith("takes")
            if key not in tasks or progress.tasks[tasks[key]].finished:
                tasks[key] = progress.add_task(label, total=total, rate="",
                                               unit="takes" if takes else "steps")
            task_id = tasks[key]
            progress.update(task_id, completed=step, total=max(total, step), description=label)
            speed = progress.tasks[task_id].speed
            progress.update(task_id, rate=f"{speed:.1f} steps/s" if speed and not takes else "")

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
    from .scene import load_scene
    from .takes.plan import take_length_s

    with _user_errors():
        s = load_scene(scene, variant)
        arr = arrange(s, {name: take_length_s(s, name) for name in s.elements})
        typer.echo(f"{s.label}: " + "\n".join(describe(arr)))
        for w in arr.warnings:
            typer.echo(f"warning: {w}", err=True)


Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Commercial = Annotated[bool, typer.Option(
    "--commercial", help="Refuse models whose licence forbids commercial use (AudioGen's "
    "CC-BY-NC-4.0), before anything is generated.")]
Model = Annotated[str | None, typer.Option("--model", help="Hub id or checkpoint directory "
                                           "(overrides the scene).")]
def _one_of(option: str, allowed: tuple[Any, ...]) -> Callable[[Any], Any]:
    """A parse-time check for a choice, so a typo fails before any heavy import, in one line."""
    def check(value: Any) -> Any:
        if value is not None and value not in allowed:
            _err(f"{option} {value} is not one of {', '.join(map(str, allowed))}")
            raise typer.Exit(2)
        return value

    return check


def _each_of(option: str, allowed: tuple[str, ...]) -> Callable[[Any], Any]:
    """``_one_of`` for a repeatable option."""
    one = _one_of(option, allowed)

    def check(values: Any) -> Any:
        for v in values or ():
            one(v)
        return values

    return check


Device = Annotated[str, typer.Option("--device", help="auto, cuda, mps or cpu.",
                                     callback=_one_of("--device", ("auto", "cuda", "mps", "cpu")))]
Format = Annotated[str, typer.Option("--format", help="wav, flac, ogg or mp3.",
                                     callback=_one_of("--format", ("wav", "flac", "ogg", "mp3")))]
BitDepth = Annotated[int | None, typer.Option(help="16, 24 or 32 (float) for wav.",
                                              callback=_one_of("--bit-depth", (16, 24, 32)))]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Take cache (default: "
                                               "$SOUNDSCAPE_CACHE_DIR or the user cache).")]
Batch = Annotated[int, typer.Option("--max-batch", min=1, help="Most takes per batch.")]
Cluster = Annotated[str | None, typer.Option(
    "--cluster", help="Generate missing takes on a Ray cluster: local (a throwaway one here), ray "
    "(RAY_ADDRESS or the cluster 'ray start' started) or ray://host:port. Needs the cluster "
    "extra.")]
Actors = Annotated[int | None, typer.Option("--actors", min=1, help="With --cluster: models "
                                            "loaded at once (default: one per GPU, or one per "
                                            "CPU but one).")]


def _cluster_spec(address: str | None, actors: int | None) -> Any:
    """The ``ClusterSpec`` of --cluster (None without it); Ray must import, or one Error line."""
    if address is None:
        if actors is not None:
            raise SoundscapeError("--actors is for --cluster; add --cluster local, ray or "
                                  "ray://host:port")
        return None
    from .takes.cluster import ClusterSpec, require_ray

    spec = ClusterSpec.parse(address, actors)
    require_ray()
    return spec


Precision = Annotated[str, typer.Option("--precision", help="auto, fp32, bf16 or fp16: the "
                                        "language model's arithmetic (auto: bf16 on CPUs with "
                                        "AVX-512 BF16 or AMX, fp16 on GPUs, else fp32).",
                                        callback=_one_of("--precision",
                                                         ("auto", "fp32", "bf16", "fp16")))]


@app.command()
def render(
    scenes: Annotated[list[Path], typer.Argument(help="Scene files.")],
    variant: Annotated[str | None, typer.Option(help="Render this variant.")] = None,
    all_variants: Annotated[bool, typer.Option("--all-variants", help="Render the base and "
                                               "every variant.")] = False,
    out: Out = Path("renders"),
    fmt: Format = "wav",
    bit_depth: BitDepth = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Generate and rewrite only "
                                                   "this element (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Render every stem again, even those "
                                        "that have not changed (conforming and measuring "
                                        "anew).")] = False,
    model: Model = None, device: Device = "auto", cache_dir: CacheDir = None,
    max_batch: Batch = 8, precision: Precision = "auto",
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, help="Processes that "
                                             "render stems (default: one per CPU core for "
                                             "long scenes).")] = None,
    loopable: Annotated[bool, typer.Option("--loopable", help="Master the mix so that its end "
                                           "flows into its start (a 2 s crossfade unless the "
                                           "scene sets master.loopable).")] = False,
    loops: Annotated[bool, typer.Option("--loops", help="Also write loops/<element>.wav for "
                                        "every looped element: one seamless period with a "
                                        "smpl loop for game engines.")] = False,
    export: Annotated[list[str] | None, typer.Option(
        "--export", help="Also write pools: each scattered element's one-shots and "
        "pools/pools.json, for an engine's random container (repeatable; loops = --loops).",
        callback=_each_of("--export", ("pools", "loops")))] = None,
    cluster: Cluster = None, actors: Actors = None,
    commercial: Commercial = False,
) -> None:
    """Generate missing takes, mix, master and write mix, stems and manifest.

    Only what changed is redone; a render with nothing changed writes nothing.
    """
    from rich.console import Console
    from rich.table import Table

    from .pipelines.render import render as do_render

    if variant and all_variants:
        _err("give --variant NAME or --all-variants, not both")
        raise typer.Exit(1)
    with _user_errors(), _progress() as progress:
        spec = _cluster_spec(cluster, actors)
        results = do_render(scenes, variant=variant, all_variants=all_variants, out=out,
                            fmt=fmt, bit_depth=bit_depth, only=only, model=model,
                            device=device, cache_dir=cache_dir, max_batch=max_batch, log=_log,
                            progress=progress, jobs=jobs, force=force, precision=precision,
                            loopable=loopable, loops=loops, export=export or (),
                            cluster=spec, commercial=commercial)
    console = Console()
    printed: set[str] = set()
    for r in results:
        label = f"{r.scene}{'/' + r.variant if r.variant else ''}"
        if r.up_to_date:
            typer.echo(f"{label}: up to date ({r.directory})")
            for w in r.export_warnings:
                _log(f"warning: {label}: {w}")
            if r.exported:
                typer.echo(f"{label}: wrote {len(r.exported)} export file(s) in {r.directory}")
            continue
        for w in r.warnings:
            line = f"warning: {label}: {w}" if w.stage not in ("cache", "generate") else \
                f"warning: {w}"
            if line not in printed:
                printed.add(line)
                _log(line)
        table = Table(title=f"{label}: {r.generated} generated, {r.cached} cached")
        for col in ("element", "takes", "stem", "LUFS", "dBTP", "file"):
            table.add_column(col)
        for e in r.elements:
            status = "file" if e.source == "file" else (
                f"{e.generated} generated, {len(e.takes) - e.generated} cached")
            table.add_row(e.element, status, "rendered" if e.rendered else "kept",
                          _fmt(e.loudness_lufs), _fmt(e.true_peak_dbtp),
                          e.stem or "(not written)")
        table.add_row("mix", "", "", _fmt(r.mix_lufs), _fmt(r.mix_true_peak_dbtp), str(r.mix))
        console.print(table)
        if r.exported:
            typer.echo(f"{label}: wrote {len(r.exported)} export file(s) ({_kinds(r)})")
        typer.echo(f"wrote {r.directory}")


def _kinds(r: Any) -> str:
    """What a render's exports were, by their folders: ``loops``, ``pools`` or both."""
    return ", ".join(sorted({p.relative_to(r.directory).parts[0] for p in r.exported}))


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
    cache_dir: CacheDir = None, max_batch: Batch = 8, precision: Precision = "auto",
    cluster: Cluster = None, actors: Actors = None,
) -> None:
    """Audition N takes of one element with distinct seeds; keep one with --keep SEED."""
    from .pipelines.audition import audition
    from .scene.keep import edit_lock, keep_seed

    with _user_errors():
        if keep is not None:
            from .scene import load_scene

            # a scene that does not load gets its errors first
            name = load_scene(scene, variant).name
            with edit_lock(out, name, create=False):  # the studio's: both edits land
                where = keep_seed(scene, element, keep, variant)
            typer.echo(f"{scene}: {'.'.join(where)} = {keep}")
            return
        spec = _cluster_spec(cluster, actors)
        with _progress() as progress:
            files = audition(scene, element, n, variant=variant, out=out, model=model,
                             device=device, cache_dir=cache_dir, max_batch=max_batch, log=_log,
                             progress=progress, precision=precision, cluster=spec)
        for seed, path in files:
            typer.echo(f"seed {seed}: {path}")
        typer.echo(f"page: {files[0][1].parent / 'index.html'}")
        v = f" --variant {variant}" if variant else ""
        typer.echo(f"keep one: soundscape takes {scene} {element}{v} --keep SEED")


@app.command()
def sfx(
    sfx_list: Annotated[Path, typer.Argument(metavar="LIST", help="SFX list (YAML or JSON).")],
    out: Out = Path("renders"), model: Model = None, device: Device = "auto",
    cache_dir: CacheDir = None, max_batch: Batch = 8, precision: Precision = "auto",
    fmt: Format = "wav", cluster: Cluster = None, actors: Actors = None,
    bit_depth: BitDepth = None,
    sample_rate: Annotated[int | None, typer.Option(
        "--sample-rate", min=8000, max=192000, help="The files' rate in Hz (default: the "
        "model's).")] = None,
    channels: Annotated[int | None, typer.Option(
        "--channels", help="1 or 2 (default: as generated).",
        callback=_one_of("--channels", (1, 2)))] = None,
    commercial: Commercial = False,
) -> None:
    """Render a game's SFX list: N trimmed, loudness-normalised variations per sound."""
    from .pipelines.sfx import render_sfx

    with _user_errors(), _progress() as progress:
        spec = _cluster_spec(cluster, actors)
        result = render_sfx(sfx_list, out, model=model, device=device, cache_dir=cache_dir,
                            fmt=fmt, max_batch=max_batch, log=_log, progress=progress,
                            precision=precision, cluster=spec, sample_rate=sample_rate,
                            channels=channels, bit_depth=bit_depth,
                            commercial=commercial)
    for w in result.warnings:
        _log(f"warning: {w}")
    typer.echo(f"wrote {len(result.variations)} variations ({result.generated} generated) and "
               f"{result.manifest}")


@app.command()
def doctor(model: Annotated[str, typer.Option("--model", help="Hub id or checkpoint directory "
                                              "to check.")] = "facebook/audiogen-medium",
           cache_dir: CacheDir = None) -> None:
    """Say what a render will use and cost here: device, weights, caches, disk, hub."""
    from .pipelines.doctor import MISSING, format_report, report

    checks = report(model, cache_dir)
    for line in format_report(checks):
        typer.echo(line)
    if any(c.status == MISSING for c in checks):
        raise typer.Exit(1)


@app.command("open")
def open_page(
    scene: Annotated[str, typer.Argument(help="Scene file, or the scene's name.")],
    variant: Annotated[str | None, typer.Option(help="Open this variant's page.")] = None,
    out: Out = Path("renders"),
) -> None:
    """Open a render's audition page (index.html) in the web browser."""
    import webbrowser

    from .outputs.page import find_page

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


Root = Annotated[Path, typer.Option("--root", help="Serve this folder: scenes are read and "
                                    "renders written only under it (default: the current "
                                    "folder).")]
Host = Annotated[str, typer.Option("--host", help="Address to bind (default loopback; another "
                                   "address lets anyone who reaches it render and write files).")]


def _service(root: Path, out: Path, model: str | None, device: str, cache_dir: Path | None,
             max_batch: int, precision: str) -> Any:
    from .servers.service import Service, Settings

    return Service(Settings(root=root, out=str(out), model=model, device=device,
                            cache_dir=str(cache_dir) if cache_dir else None,
                            max_batch=max_batch, precision=precision))


def _warn_bind(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: binding {host}: anyone who can reach this address can render scenes "
             f"and write files under the root; there is no authentication")


@app.command()
def mcp(
    root: Root = Path("."), out: Out = Path("renders"),
    transport: Annotated[str, typer.Option("--transport", help="stdio (for a desktop "
                                           "assistant) or http (streamable HTTP at /mcp).",
                                           callback=_one_of("--transport", ("stdio", "http")))]
    = "stdio",
    host: Host = "127.0.0.1", port: Annotated[int, typer.Option(help="HTTP port.")] = 8765,
    model: Model = None, device: Device = "auto", cache_dir: CacheDir = None,
    max_batch: Batch = 8, precision: Precision = "auto",
) -> None:
    """Serve soundscape to MCP clients (agents): validate, plan, render, takes, SFX."""
    with _user_errors():
        from .servers.mcp import build

        service = _service(root, out, model, device, cache_dir, max_batch, precision)
        server = build(service)
        if transport == "stdio":
            server.run("stdio")
            return
        import uvicorn

        _warn_bind(host)
        uvicorn.run(server.streamable_http_app(host=host), host=host, port=port,
                    log_level="warning")


@app.command()
def serve(
    scenes: Annotated[list[str] | None, typer.Argument(help="Scene files (under the root) to "
                                                       "open in the live studio.")] = None,
    root: Root = Path("."), out: Out = Path("renders"),
    host: Host = "127.0.0.1", port: Annotated[int, typer.Option(help="HTTP port.")] = 8765,
    model: Model = None, device: Device = "auto", cache_dir: CacheDir = None,
    max_batch: Batch = 8, precision: Precision = "auto",
) -> None:
    """A local web server: the live studio, render jobs, files, and MCP at /mcp."""
    with _user_errors():
        import uvicorn

        from .servers.http import build_app

        service = _service(root, out, model, device, cache_dir, max_batch, precision)
        app_ = build_app(service, tuple(scenes or ()), host)
        _warn_bind(host)
        shown = f"[{host}]" if ":" in host else host
        for s in scenes or ():
            typer.echo(f"studio: http://{shown}:{port}/studio/{s}", err=True)
        typer.echo(f"serving {service.root} at http://{shown}:{port}/ (MCP at /mcp)", err=True)
        uvicorn.run(app_, host=host, port=port, log_level="warning")


@dev.command("tiny-model")
def tiny_model(
    directory: Path, seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
    layout: Annotated[str, typer.Option(help="export: the model's published files in DIR (use "
                                        "--model DIR); hub: a Hugging Face cache in DIR "
                                        "holding the hub repositories as users download them "
                                        "(use HF_HOME=DIR).")] = "export",
    engine: Annotated[str, typer.Option(help="audiogen-medium, stable-audio-open-1.0 or "
                                        "stable-audio-open-small.")] = "audiogen-medium",
) -> None:
    """Write a tiny random model in its published layout for offline runs."""
    from .generate.engines import SAO_1, SAO_SMALL, by_short_name

    if layout not in ("export", "hub"):
        _err(f"--layout {layout!r} is not a layout; use export or hub")
        raise typer.Exit(1)
    spec = by_short_name(engine)
    if spec is None:
        _err(f"--engine {engine!r} is not an engine; use audiogen-medium, "
             f"stable-audio-open-1.0 or stable-audio-open-small")
        raise typer.Exit(1)
    if spec.name in (SAO_1, SAO_SMALL):
        with _user_errors():
            where = _write_tiny_stable_audio(spec.name, directory, seed, layout)
        typer.echo(where)
        return
    with _user_errors():
        if layout == "hub":
            from .generate.dev.replica import write_hub_replica

            write_hub_replica(directory, seed)
            typer.echo(f"wrote a tiny random facebook/audiogen-medium and t5-large as a Hugging "
                       f"Face cache in {directory}; use HF_HOME={directory} HF_HUB_OFFLINE=1")
            return
        from .generate.dev.tiny import write_tiny_model

        write_tiny_model(directory, seed)
    typer.echo(f"wrote a tiny random AudioGen checkpoint to {directory}; use --model {directory}")


def _write_tiny_stable_audio(engine: str, directory: Path, seed: int, layout: str) -> str:
    from .generate.engines import ENGINES, SAO_1

    spec = ENGINES[engine]
    if engine == SAO_1:
        from .generate.dev.sa_replica import write_sao1_hub, write_tiny_sao1

        write_hub, write_dir = write_sao1_hub, write_tiny_sao1
    else:
        from .generate.stable_audio_small.tiny import write_small_hub_replica, write_tiny_small

        write_hub, write_dir = write_small_hub_replica, write_tiny_small
    if layout == "hub":
        write_hub(directory, seed)
        return (f"wrote a tiny random {spec.repo} (with its text encoder) as a Hugging Face "
                f"cache in {directory}; use HF_HOME={directory} HF_HUB_OFFLINE=1 and model: "
                f"{spec.short_names[0]}")
    write_dir(directory, seed)
    return f"wrote a tiny random {spec.title} to {directory}; use --model {directory}"


# glibc's allocator, as the command line sets it for its own process (``_tune_process``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS = 16 << 20  # allocations below this come from the heap
HEAP_KEEP = 32 << 20  # free memory the heap keeps for the next ones


def _tune_process() -> None:
    """Settings for the command's own process (not the library's to make for a program that
    imports it):

    - numpy's BLAS on one thread (unless ``OPENBLAS_NUM_THREADS`` says otherwise): its only
      work here is small products (the true-peak bounds), and its idle threads spin on the
      cores the render's processes need (three times the CPU of the product itself; a tenth of
      a second on a volume edit of the ten-minute benchmark). Only numpy's: the variable is
      set while numpy loads its OpenBLAS and removed after, so a BLAS that torch loads later
      (OpenBLAS on ARM) and the processes the command starts keep their threads.
    - glibc keeps blocks up to ``HEAP_BLOCKS`` in its heap and ``HEAP_KEEP`` of free memory
      there, instead of mapping each megabyte-sized block afresh and returning it when freed:
      each block's pages were then faulted in and zeroed again, a third of the CPU of measuring
      a mix's loudness (235,000 page faults for a ten-minute stereo sum). Forked processes
      inherit it; memory stays flat (blocks are freed as before, their pages reused).
    """
    blas = "OPENBLAS_NUM_THREADS"
    if blas not in os.environ and "numpy" not in sys.modules:
        os.environ[blas] = "1"
        try:
            import numpy  # noqa: F401  (its OpenBLAS reads the variable as it loads)
        finally:
            del os.environ[blas]
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no mallopt)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS)
        libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)


def main() -> None:
    _tune_process()
    try:
        app()
    except SoundscapeError as e:  # pragma: no cover - safety net
        _err(str(e))
        sys.exit(1)
    finally:
        # The interpreter's shutdown runs the cyclic garbage collector over every object the
        # command made and imported (pydantic's schemas, typer's, the scene's): 40-60 ms of a
        # one-element edit's 1.3 s, for memory the process gives back as it ends anyway.
        # Frozen, they are left out of those collections (still finalised by refcount).
        gc.freeze()
