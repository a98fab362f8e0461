"""Audition page stage: a render's folder -> ``index.html``, a DAW-like view to look and listen.

Input: a render folder (``manifest.json``, ``mix.<fmt>``, ``stems/``) or a folder of auditioned
takes. Output: one self-contained, offline HTML file beside them: the page's code and styles are
inlined from the templates in ``web/``, the manifest and each stem's overview (peak and RMS per
bin, in dB) are embedded as JSON, and the audio is referenced by relative links. Pages opened
from ``file://`` may not ``fetch()`` local files, which is why the data is embedded rather than
loaded.

Overviews are computed by reading each file back block by block, so memory stays flat whatever
the length of the render.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..audio_io import atomic_write_text
from ..dsp.overview import FLOOR_DB as FLOOR_DB  # the page's, for its readers
from ..dsp.overview import OVERVIEW_BINS
from ..dsp.overview import OverviewAccumulator as OverviewAccumulator
from ..errors import SoundscapeError

READ_FRAMES = 1 << 16
PAGE = "index.html"
_DATA = re.compile(r'(<script id="(?P<id>[a-z-]+)" type="application/json">)(?P<json>.*?)'
                   r"(</script>)", re.S)


def overview(path: str | Path, bins: int = OVERVIEW_BINS) -> dict[str, Any]:
    """Peak and RMS of an audio file in ``bins`` equal slices, in whole dBFS.

    The file is streamed in blocks, so memory does not grow with its length. Every channel
    counts: a bin's peak is the largest absolute sample, its RMS the mean power of all
    channels.

    Returns:
        ``{"bins": n, "seconds_per_bin": s, "peak_db": [...], "rms_db": [...]}``; values are
        ints from ``FLOOR_DB`` to 0 (or above, for a stem that clips).
    """
    return _read_overview(path, bins)


def _read_overview(path: str | Path, bins: int = OVERVIEW_BINS) -> dict[str, Any]:
    from pedalboard.io import AudioFile

    with AudioFile(str(path)) as f:
        frames, sr = int(f.frames), float(f.samplerate)
        acc = OverviewAccumulator(frames, f.num_channels, bins)
        while acc.pos < frames:
            block = f.read(min(READ_FRAMES, frames - acc.pos))
            if block.shape[1] == 0:
                break
            acc.add(block)
    return acc.result(sr)


def overviews_of(paths: list[Path]) -> dict[Path, dict[str, Any]]:
    """``overview`` of each file, several at a time: the decoding and the sums release the
    GIL, so threads use the cores a render leaves idle while it writes its page."""
    from concurrent.futures import ThreadPoolExecutor

    from ..mixer.workers import cpu_count

    threads = max(1, min(4, cpu_count(), len(paths)))
    if threads == 1:
        return {p: overview(p) for p in paths}
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(paths, pool.map(overview, paths), strict=True))


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("web", name).read_text(encoding="utf-8")


def _json_block(data: Any) -> str:
    # "</script" or "<!--" in a string would end or upset the script element: JSON may
    # spell "<" as "\u003c" (it only occurs inside strings)
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _fill(template: str, title: str, blocks: dict[str, Any]) -> str:
    page = template.replace("/*CSS*/", _template("page.css"))
    page = page.replace("{{title}}", html.escape(title))
    for key, value in blocks.items():
        page = page.replace(f"{{{{{key}}}}}", _json_block(value))
    return page


def _element_warnings(names: list[str], warnings: list[Any]) -> tuple[dict[str, list[str]],
                                                                      list[str]]:
    """Deal the manifest's warnings to the elements they are about (each typed warning names its
    element, or none); the rest concern the scene."""
    mine: dict[str, list[str]] = {n: [] for n in names}
    rest: list[str] = []
    for item in warnings:
        named = item.get("element")
        mine.get(named, rest).append(item["message"])
    return mine, rest


def _base_dir(directory: Path, manifest: dict[str, Any]) -> Path:
    return directory.parent if manifest.get("variant") else directory


def siblings(directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The scene's renders next to this one (base and variants), as links relative to
    ``directory``; the current one is marked."""
    base = _base_dir(directory, manifest)
    found: list[tuple[str | None, Path]] = []
    if (base / "manifest.json").is_file():
        found.append((None, base))
    for sub in sorted(base.iterdir()) if base.is_dir() else []:
        if sub.is_dir() and (sub / "manifest.json").is_file():
            found.append((sub.name, sub))
    here = directory.resolve()
    up = "../" if manifest.get("variant") else ""
    return [{"variant": variant, "href": f"{up}{variant + '/' if variant else ''}{PAGE}",
             "current": d.resolve() == here} for variant, d in found]


def page_data(directory: Path,
              known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The data a render page embeds: the manifest, overviews of mix and stems, warnings per
    element and the sibling renders. ``known``: overviews already computed (``overview_of``),
    by file; like the page's own, each is used only while its file is the one it was read
    from."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SoundscapeError(f"{manifest_path} not found; render the scene first "
                              f"(soundscape render SCENE)") from None
    except (OSError, ValueError) as err:
        raise SoundscapeError(f"{manifest_path} is not a readable manifest ({err}); render the "
                              f"scene again") from None
    names = [e["element"] for e in manifest["elements"]]
    per_element, general = _element_warnings(names, manifest.get("warnings", []))
    earlier = {**_earlier_overviews(directory), **(known or {})}
    stems: dict[str, tuple[Path, str]] = {}
    for e in manifest["elements"]:
        stem = directory / e["stem"] if e.get("stem") else None
        if stem is None:  # --only left the old stem in place
            guess = directory / "stems" / f"{e['element']}.{manifest['format']}"
            stem = guess if guess.is_file() else None
        if stem is not None and stem.is_file():
            stems[e["element"]] = (stem, e.get("key", "") if e.get("stem") else "")
    mix = directory / manifest["mix"]["file"]
    found = _overviews(directory, [*stems.values(), *(
        [(mix, manifest["mix"].get("key", ""))] if mix.is_file() else [])], earlier)
    overviews = {name: {"file": stem.relative_to(directory).as_posix(), **found[stem]}
                 for name, (stem, _) in stems.items()}
    mix_overview = found.get(mix)
    return {"manifest": manifest, "overviews": overviews, "mix_overview": mix_overview,
            "warnings": {"elements": per_element, "scene": general},
            "siblings": siblings(directory, manifest)}


def _source(directory: Path, path: Path, key: str) -> dict[str, Any]:
    """What identifies the file an overview was computed from: its path, the content key the
    manifest gives it, and its size and modification time (a file rewritten or replaced since
    has another of these)."""
    st = path.stat()
    return {"file": path.relative_to(directory).as_posix(), "key": key, "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _earlier_overviews(directory: Path) -> dict[str, dict[str, Any]]:
    """The overviews the folder's page holds now, by file, each with its ``source``: a render
    that rewrote only some files reads back only those (the page is written whole, atomically,
    so what it holds is what it was computed from)."""
    try:
        text = (directory / PAGE).read_text(encoding="utf-8")
    except OSError:
        return {}
    match = next((mt for mt in _DATA.finditer(text) if mt.group("id") == "data"), None)
    try:
        data = json.loads(match.group("json")) if match else {}
    except ValueError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    items = [*(data.get("overviews") or {}).values(), data.get("mix_overview")] \
        if isinstance(data, dict) else []
    for item in items:
        source = item.get("source") if isinstance(item, dict) else None
        if isinstance(source, dict) and isinstance(source.get("file"), str):
            found[source["file"]] = item
    return found


def overview_of(directory: Path, path: Path, key: str,
                found: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``overview(path)`` with its ``source``, for ``page_data``'s ``known``: its file (relative
    to ``directory``) and the overview. ``key``: the file's content key in the manifest;
    ``found``: the overview of the samples written into the file, if they were gathered as it
    was written (``OverviewAccumulator``), rather than read back from it."""
    source = _source(directory, path, key)
    return source["file"], {**(overview(path) if found is None else found), "source": source}


def _overviews(directory: Path, files: list[tuple[Path, str]],
               earlier: dict[str, dict[str, Any]]) -> dict[Path, dict[str, Any]]:
    """``overview`` of each ``(path, key)`` with its ``source``: the earlier page's where that
    was computed from this very file (same key, size and modification time), the others read
    anew, several at a time (``overviews_of``)."""
    done: dict[Path, dict[str, Any]] = {}
    sources = {path: _source(directory, path, key) for path, key in files}
    for path, source in sources.items():
        old = earlier.get(source["file"])
        if source["key"] and old is not None and old.get("source") == source:
            done[path] = {k: v for k, v in old.items() if k != "file"}
    todo = [path for path in sources if path not in done]
    for path, found in overviews_of(todo).items():
        done[path] = {**found, "source": sources[path]}
    return done


def write_page(directory: str | Path, known: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``index.html`` into a render folder and refresh the sibling pages' variant links.
    ``known``: overviews computed already (``page_data``).

    Returns the page's path.
    """
    directory = Path(directory)
    data = page_data(directory, known)
    m = data["manifest"]
    title = f"{m['scene']}{' / ' + m['variant'] if m.get('variant') else ''} — soundscape"
    path = directory / PAGE
    atomic_write_text(path, _fill(_template("render.html"), title, {"data": data}))
    for link in data["siblings"]:
        if not link["current"]:
            _refresh_links(directory / link["href"])
    return path


def _refresh_links(page: Path) -> None:
    """Rewrite only the list of sibling renders embedded in an existing page (cheap: no
    overview is recomputed)."""
    try:
        text = page.read_text(encoding="utf-8")
    except OSError:
        return
    match = next((mt for mt in _DATA.finditer(text) if mt.group("id") == "data"), None)
    if match is None:
        return
    try:
        data = json.loads(match.group("json"))
    except ValueError:
        return  # not a page this version wrote; it keeps its links
    data["siblings"] = siblings(page.parent, data["manifest"])
    new = text[:match.start("json")] + _json_block(data) + text[match.end("json"):]
    if new != text:
        atomic_write_text(page, new)


def write_takes_page(directory: str | Path, scene: str, scene_file: str, element: str,
                     prompt: str, takes: list[tuple[int, Path]],
                     variant: str | None = None) -> Path:
    """Write ``index.html`` beside auditioned takes: waveform, player and seed of each, with
    the ``--keep SEED`` command to copy.

    Args:
        directory: the folder holding the take files.
        scene: the scene's label; scene_file: the path to give ``soundscape takes``.
        takes: ``(seed, path)`` of each take.
    """
    directory = Path(directory)
    items = []
    for seed, path in takes:
        items.append({"seed": seed, "file": Path(path).relative_to(directory).as_posix(),
                      "keep": f"soundscape takes {_shell(scene_file)} {_shell(element)} "
                              + (f"--variant {_shell(variant)} " if variant else "")
                              + f"--keep {seed}",
                      **overview(path)})
    data = {"scene": scene, "scene_file": scene_file, "element": element, "prompt": prompt,
            "variant": variant, "takes": items}
    path = directory / PAGE
    atomic_write_text(path, _fill(_template("takes.html"), f"{element} takes — {scene}",
                                  {"data": data}))
    return path


def _shell(word: str) -> str:
    import shlex

    return shlex.quote(word)


def page_path(out: str | Path, scene: str, variant: str | None) -> Path:
    """Where the page of a scene (or variant) render lives under ``out``."""
    d = Path(out) / scene
    return (d / variant if variant else d) / PAGE


def find_page(out: str | Path, scene: str, variant: str | None) -> Path:
    """The page of a render, written now from its manifest if the render predates pages.

    Raises:
        SoundscapeError: when there is no such render.
    """
    page = page_path(out, scene, variant)
    if page.is_file():
        return page
    if (page.parent / "manifest.json").is_file():
        return write_page(page.parent)
    label = f"{scene}{' --variant ' + variant if variant else ''}"
    raise SoundscapeError(f"no render of {label} in {page.parent}; render it first "
                          f"(soundscape render SCENE{' --variant ' + variant if variant else ''}"
                          f"{'' if str(out) == 'renders' else ' --out ' + str(out)})")

