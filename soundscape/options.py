"""The settings a command passes down, as two typed values instead of a dozen parameters.

``GenerationOptions``: how missing takes are generated (model override, device, cache, batch,
precision, log and progress, and the Ray cluster that generates them: ``ClusterSpec``).
``OutputOptions``: what a render writes and where (folder, format, bit depth, ``--only``,
``--force``, stem processes, a loopable mix, exports). Built once at the
edge (the CLI or the public ``render``/``render_sfx``/``audition`` functions) and handed to every
stage that needs them; no stage reads them from anywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import SoundscapeError

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def quiet(_: str) -> None:
    """A log that says nothing."""


_REMOTE = re.compile(r"^ray://(?P<host>[^:/\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class ClusterSpec:
    """Where takes are generated when not here (``takes.cluster``): ``address`` is ``local`` (a
    throwaway cluster on this machine), ``ray`` (the cluster ``RAY_ADDRESS`` or ``ray start``
    names) or ``ray://host:port`` (a remote cluster's client port). ``actors``: models loaded at
    once (None: one per GPU, or one per CPU but one when the cluster has no GPUs)."""

    address: str
    actors: int | None = None

    @classmethod
    def parse(cls, address: str, actors: int | None = None) -> ClusterSpec:
        """Check the address's form (not whether anything answers there)."""
        if address not in ("local", "ray") and not _REMOTE.match(address):
            raise SoundscapeError(f"--cluster {address!r} is not a cluster address; use local, "
                                  f"ray (RAY_ADDRESS or a 'ray start' cluster) or "
                                  f"ray://host:port")
        if actors is not None and actors < 1:
            raise SoundscapeError(f"--actors {actors}: give at least 1")
        return cls(address, actors)


@dataclass(frozen=True)
class GenerationOptions:
    """How the takes a command needs and lacks are generated."""

    model: str | None = None  # overrides the scene's (or SFX list's) model; None: theirs
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    cache_dir: Path | None = None  # the take store; None: SOUNDSCAPE_CACHE_DIR or the user cache
    max_batch: int = 8  # takes per generate call at most
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (not part of a take's identity)
    log: Log = quiet
    progress: Progress | None = None
    cluster: ClusterSpec | None = None  # generate on this Ray cluster instead of here


@dataclass(frozen=True)
class OutputOptions:
    """What a render writes, and where."""

    out: Path = Path("renders")  # renders go to <out>/<scene>/[<variant>/]
    fmt: str = "wav"  # wav, flac, ogg or mp3
    bit_depth: int | None = None  # 16, 24 or 32 (float); None: the format's default
    only: frozenset[str] | None = None  # generate and write only these elements' stems
    force: bool = False  # render every stem again
    jobs: int | None = None  # stem processes; None: one per core for long scenes
    loopable: bool = False  # make every mix loop seamlessly (master.loopable)
    loops: bool = False  # write each looped element's loop file
    export: tuple[str, ...] = ()  # "loops", "pools"
