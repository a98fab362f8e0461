"""Audition: N takes of one element with distinct seeds, written side by side to choose from.

Input: a scene file and an element name. Output: ``<out>/<scene>/takes/<element>/
<element>-seed<SEED>.wav``, one per seed, at the model's rate. Keeping one (``--keep SEED``) is
``scene.keep.keep_seed``.
"""

from __future__ import annotations

from pathlib import Path

from ..audio_io import write_audio
from ..errors import RenderError, SoundscapeError
from ..generate.models import resolve
from ..options import ClusterSpec, GenerationOptions, Log, Progress, quiet
from ..outputs.page import write_takes_page
from ..scene import load_scene
from ..takes.plan import take_requests
from ..takes.run import generate_missing
from ..takes.store import TakeCache


def audition(scene_path: str | Path, element: str, n: int = 4, *, variant: str | None = None,
             out: str | Path = "renders", model: str | None = None, device: str = "auto",
             cache_dir: str | Path | None = None, max_batch: int = 8, log: Log | None = None,
             progress: Progress | None = None, precision: str = "auto",
             cluster: ClusterSpec | None = None) \
        -> list[tuple[int, Path]]:
    """Generate ``n`` takes of one element with distinct seeds (one batch) and write each.

    Returns ``(seed, path)`` per take, seeds in order.
    """
    gen = GenerationOptions(model, device, Path(cache_dir) if cache_dir else None, max_batch,
                            precision, log or quiet, progress, cluster)
    return audition_takes(scene_path, element, n, gen, variant=variant, out=Path(out))


def audition_takes(scene_path: str | Path, element: str, n: int, gen: GenerationOptions, *,
                   variant: str | None = None, out: Path = Path("renders")) \
        -> list[tuple[int, Path]]:
    """``audition`` with its generation settings as one value."""
    log = gen.log
    scene = load_scene(scene_path, variant)
    if element not in scene.elements:
        raise SoundscapeError(f"{scene_path}: no element '{element}'; elements: "
                              f"{', '.join(scene.elements)}")
    e = scene.elements[element]
    if e.prompt is None:
        raise SoundscapeError(f"{element} plays a file, not a prompt; nothing to audition")
    ref = resolve(gen.model or scene.model, scene.base_dir)
    one = scene.model_copy(update={"elements": {element: e.model_copy(
        update={"variations": n, "stereo": "pan"})}})
    takes = take_requests(one, element, ref.identity)
    cache = TakeCache(gen.cache_dir)
    _, warnings = generate_missing([t.request for t in takes], cache, ref, gen)
    for w in warnings:
        log(f"warning: {w}")
    files = []
    for t in takes:
        got = cache.get(t.request.key)
        if got is None:
            raise RenderError(f"take seed {t.request.seed} is missing from the cache; run again")
        path = Path(out) / scene.name / "takes" / element / f"{element}-seed{t.request.seed}.wav"
        write_audio(path, got[0], got[1])
        files.append((t.request.seed, path))
    write_takes_page(files[0][1].parent, scene.label, str(scene_path), element, e.prompt, files,
                     variant)
    return files
