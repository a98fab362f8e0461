"""Outputs stage, catalog: an SFX library's ``catalog.csv`` for library tools.

Input: the written variations. Output: CSV text, one row per file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class SfxVariation:
    """One written variation of one sound."""

    sound: str
    prompt: str
    seed: int
    key: str
    file: str  # relative to the list's folder
    duration_s: float
    loudness_lufs: float | None
    true_peak_dbtp: float | None
    generated: bool
    generator: dict[str, str] | None = None  # the device and precision that made it
    ucs: dict[str, str] | None = None  # CatID, FXName, CreatorID, SourceID, UserData
    sample_rate: int | None = None
    channels: int | None = None
    target_lufs: float | None = None  # what the list asked; loudness_lufs is what was reached
    licence: str = ""  # of the weights that made it
    commercial: bool = False  # whether that licence allows commercial use
    limiter_reduction_db: float | None = None  # the limiter's deepest gain reduction


CATALOG_COLUMNS = ("file", "name", "prompt", "seed", "duration_s", "loudness_lufs",
                   "true_peak_dbtp", "CatID", "FXName", "CreatorID", "SourceID", "UserData",
                   "sample_rate", "channels", "target_lufs", "licence",
                   "commercial", "limiter_reduction_db")


def catalog_csv(variations: tuple[SfxVariation, ...] | list[SfxVariation]) -> str:
    """``catalog.csv``: one row per file, the UCS columns empty for sounds without UCS;
    ``loudness_lufs`` is what the file reached, ``target_lufs`` what the list asked (empty:
    none), ``limiter_reduction_db`` how deep the limiter cut its peaks on the way."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CATALOG_COLUMNS)
    for v in variations:
        u = v.ucs or {}
        w.writerow([v.file, v.sound, v.prompt, v.seed, f"{v.duration_s:.6f}",
                    "" if v.loudness_lufs is None else v.loudness_lufs,
                    "" if v.true_peak_dbtp is None else v.true_peak_dbtp,
                    u.get("CatID", ""), u.get("FXName", ""), u.get("CreatorID", ""),
                    u.get("SourceID", ""), u.get("UserData", ""),
                    "" if v.sample_rate is None else v.sample_rate,
                    "" if v.channels is None else v.channels,
                    "" if v.target_lufs is None else v.target_lufs, v.licence,
                    "yes" if v.commercial else "no",
                    "" if v.limiter_reduction_db is None else v.limiter_reduction_db])
    return buf.getvalue()
