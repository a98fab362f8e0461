"""Outputs, lossy mixes: an mp3 or ogg mix that keeps the true-peak ceiling once decoded.

Input: the mastered mix (a ``Bus``), the file to write and the ceiling. Output: the encoded
file, and the loudness and true peak of what a player decodes from it.

A lossy codec does not keep the waveform: it drops and requantises bands, and the decoded
signal's peaks stand higher than the master's (an mp3 of a -1.02 dBTP master decoded at
-0.93 dBTP, an ogg at -0.85). So the file is encoded, decoded and measured with the same 8x
meter; where it overshoots, the master is encoded again from the mastered samples (never from
the decoded ones: no second generation of loss) with a trim that brings the decoded peak under
the ceiling. The codec's overshoot roughly scales with the level, so one trim mostly holds;
at most ``ATTEMPTS`` encodes (a mix still over the ceiling after them is warned about).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio_io import AtomicAudioWriter
from ..dsp.bus import BLOCK, Bus
from ..dsp.meter import Meter

LOSSY = ("mp3", "ogg")
ATTEMPTS = 3
MARGIN_DB = 0.05  # below the ceiling, for the codec's frame-to-frame variation


@dataclass(frozen=True)
class Decoded:
    """What a player decodes from the encoded mix."""
    loudness_lufs: float
    true_peak_dbtp: float
    trim_db: float  # <= 0: the gain applied to the master before its last encoding


def measure_file(path: Path) -> tuple[float, float]:
    """Integrated loudness (LUFS) and true peak (dBTP, 8x) of an audio file, decoded block by
    block."""
    from pedalboard.io import AudioFile

    with AudioFile(str(path)) as f:
        meter = Meter(int(round(f.samplerate)), f.num_channels)
        while f.tell() < f.frames:
            block = f.read(BLOCK)
            if block.shape[1] == 0:
                break
            meter.add(np.ascontiguousarray(block, np.float32))
    meter.finish()
    return meter.integrated_loudness(), meter.true_peak_db


def encode_within_ceiling(mastered: Bus, path: Path, sample_rate: int, ceiling_db: float,
                          bit_depth: int | None = None) -> Decoded:
    """Encode ``mastered`` to ``path`` (its suffix names the codec) so that its decoded true
    peak is at most ``ceiling_db``; return what the decoded file measures."""
    trim_db = 0.0
    for attempt in range(ATTEMPTS):
        gain = np.float32(10 ** (trim_db / 20))
        with AtomicAudioWriter(path, sample_rate, mastered.channels, bit_depth,
                               background=True) as w:
            for _, block in mastered.blocks():
                w.write(block * gain if trim_db else block)
        lufs, peak = measure_file(path)
        if peak <= ceiling_db:
            break
        # the overshoot does not always shrink dB for dB with the trim (ogg's shrank by half):
        # later trims go further
        trim_db -= (peak - ceiling_db + MARGIN_DB) * (1 << attempt)
    return Decoded(lufs, peak, trim_db)


class MasterFile:
    """Where the master's blocks go: straight into a lossless file, or, for mp3 and ogg, into
    a staging bus (on disk beside ``scratch`` when long) that is encoded on a clean exit by
    ``encode_within_ceiling``; ``decoded`` then holds what the file decodes to (None for a
    lossless file, whose samples are the master's)."""

    def __init__(self, path: Path, sample_rate: int, channels: int, frames: int,
                 bit_depth: int | None, ceiling_db: float, scratch: Path | None = None) -> None:
        self.path, self.sample_rate, self.channels = path, sample_rate, channels
        self.frames, self.bit_depth, self.ceiling_db = frames, bit_depth, ceiling_db
        self.scratch = scratch
        self.lossy = path.suffix.lstrip(".").lower() in LOSSY
        self.decoded: Decoded | None = None
        self._writer: AtomicAudioWriter | None = None
        self._bus: Bus | None = None
        self._pos = 0

    def __enter__(self) -> MasterFile:
        if self.lossy:
            self._bus = Bus.temporary(self.channels, self.frames, self.scratch)
        else:
            self._writer = AtomicAudioWriter(self.path, self.sample_rate, self.channels,
                                             self.bit_depth, background=True).__enter__()
        return self

    def write(self, block: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(block)
            return
        assert self._bus is not None
        self._bus.write(self._pos, block)
        self._pos += block.shape[1]

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if self._writer is not None:
            self._writer.__exit__(exc_type, exc, tb)
            return
        assert self._bus is not None
        with self._bus:
            if exc_type is None:
                self.decoded = encode_within_ceiling(self._bus, self.path, self.sample_rate,
                                                     self.ceiling_db, self.bit_depth)
