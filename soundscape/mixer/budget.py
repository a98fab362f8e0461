"""Resource sanity: what a render will ask of memory and disk, checked before anything is made.

Input: a planned scene (its arrangement, output settings and which stems are written). Output:
an estimate in bytes, and a ``SoundscapeError`` that says what does not fit, how much is needed
and available, and what to change, instead of a MemoryError or a full disk halfway through.
The estimate is deliberately rough (it errs high): the point is to refuse renders that cannot
possibly fit, such as 60 000 one-shots of a minute each, not to predict the peak.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..arrange import Arrangement
from ..dsp.bus import on_disk
from ..dsp.effects import EffectSpec
from ..dsp.segments import SEGMENT_S
from ..errors import SoundscapeError

BUS_COPIES = 2  # the sum, and the limiter's output staged for the final trim (``master_bus``)
# master effects write into a bus of their own when the sum is kept for the next render
# (``master_bus(keep_sum=True)``, every lossless render that is not loopable)
EFFECTS_BUS_COPIES = 1
WHOLE_TIMELINE_COPIES = 3  # a chain that cannot stream holds a segment in and out (and ours)
SEGMENT_MARGIN_S = 13.0  # pre-roll (the longest tail waited for), search and post-roll
STREAMING = 64 * 2**20  # blocks in flight, meters, the limiter's state: flat at any length
LOSSY_BYTES_PER_SAMPLE = 0.25  # ogg and mp3 at their default quality, generously


@dataclass(frozen=True)
class Need:
    memory: int  # bytes
    disk: int  # bytes
    detail: str  # where the memory goes, for the message


def estimate(arr: Arrangement, frames: int, channels: int, fmt: str, bit_depth: int | None,
             written_stems: int, workers: int = 1,
             master_effects: tuple[EffectSpec, ...] = ()) -> Need:
    """Bytes of memory and disk a render of ``arr`` asks for, at most.

    The sum, its staged master and the stem processes' parts are held in memory when short
    and in temporary files on the output disk when long (``bus.on_disk``)."""
    from ..dsp.effects import WHOLE_TIMELINE

    mix = channels * frames * 4
    segment = WHOLE_TIMELINE_COPIES * min(
        mix, int(channels * (SEGMENT_S + SEGMENT_MARGIN_S) * arr.sample_rate * 4))
    buses = (BUS_COPIES + (EFFECTS_BUS_COPIES if master_effects else 0)
             + max(0, workers - 1)) * mix
    scratch = buses if on_disk(channels, frames) else 0
    master = STREAMING + (buses - scratch)
    if any(fx.name in WHOLE_TIMELINE for fx in master_effects):
        master += segment
    clips = 0
    whole = 0
    for plan in arr.elements:
        # one-shots are held as played (gain and fades applied), stereo once panned
        per_clip = 4 * (2 if len(plan.pans) > 1 and channels == 2 else 1)
        clips += sum(int(c.length_s * arr.sample_rate) * per_clip for c in plan.clips)
        if any(fx.name in WHOLE_TIMELINE for fx in plan.effects):
            whole = max(whole, segment)
    memory = master + clips + whole
    if fmt == "wav":
        per_sample = (bit_depth or 24) / 8
    elif fmt == "flac":
        per_sample = min(bit_depth or 24, 24) / 8  # uncompressed, at worst
    else:
        per_sample = LOSSY_BYTES_PER_SAMPLE
    disk = int((written_stems + 1) * channels * frames * per_sample) + scratch
    detail = (f"{_gib(master)} GiB for the mix and its master, {_gib(clips)} GiB for "
              f"{sum(len(p.clips) for p in arr.elements)} one-shots")
    if whole:
        detail += f", {_gib(whole)} GiB for a pitch_shift chain's segments"
    return Need(memory, disk, detail)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the file system that will hold ``path`` (its nearest existing folder)."""
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check(label: str, need: Need, directory: Path) -> None:
    """Refuse a render that cannot fit in memory or on the disk that will hold it.

    Raises:
        SoundscapeError: one line naming the scene, what is needed, what is available, the fix.
    """
    mem = available_memory()
    if mem is not None and need.memory > 0.9 * mem:
        raise SoundscapeError(
            f"{label}: this render would need about {_gib(need.memory)} GiB of memory "
            f"({need.detail}) and {_gib(mem)} GiB are available; shorten the scene, use fewer "
            f"or shorter one-shots (scatter count, density, take duration), or --jobs 1")
    disk = free_disk(directory)
    if disk is not None and need.disk > disk:
        raise SoundscapeError(
            f"{label}: the stems and mix (and the render's temporary files) would take about "
            f"{need.disk / 1e9:.1f} GB and "
            f"{directory} has {disk / 1e9:.1f} GB free; free some space, write elsewhere with "
            f"--out, or use --format flac or ogg")
