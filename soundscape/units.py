"""Scene-format edge: parse values written with units ("2.5 s", "-6 dB", "8 kHz") into numbers.

Input: what YAML gives (numbers or strings). Output: floats in the unit named by the function.
Each parser raises ``ValueError`` with a message that shows the value and how to write it.
"""

from __future__ import annotations

import math
import re
from typing import Any

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_RE = re.compile(rf"^\s*({_NUM})\s*([A-Za-z%µ]*)\s*$")

_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
               "ms": 1e-3, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
               "h": 3600.0}
_FREQ_UNITS = {"": 1.0, "hz": 1.0, "khz": 1000.0}


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, shortened: a megabyte-long bad value is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}...{text[-8:]} ({len(text)} chars)"


def _split(value: str) -> tuple[float, str] | None:
    m = _UNIT_RE.match(value)
    if not m:
        return None
    return float(m.group(1)), m.group(2)


def _check_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(float(value)):
            return None
        return float(value)
    return None


def parse_duration(value: Any) -> float:
    """Seconds from ``12``, ``"2.5 s"``, ``"500 ms"``, ``"2 min"`` or ``"1:30"``."""
    n = _check_number(value)
    if n is not None:
        return n
    if isinstance(value, str):
        m = re.match(r"^\s*(\d+):(\d{1,2}(?:\.\d*)?)\s*$", value)
        if m:
            return int(m.group(1)) * 60.0 + float(m.group(2))
        parts = _split(value)
        if parts and parts[1].lower() in _TIME_UNITS:
            return parts[0] * _TIME_UNITS[parts[1].lower()]
    raise ValueError(f"{show(value)} is not a duration; write e.g. 2.5, '2.5 s', '500 ms' or "
                     f"'1:30'")


def parse_level_db(value: Any) -> float:
    """Decibels from ``"-6 dB"`` or a linear gain such as ``0.5`` (0 is silence: -inf dB)."""
    n = _check_number(value)
    if n is not None:
        if n < 0:
            raise ValueError(f"{show(value)} is a negative linear gain; write a level in dB as "
                             f"'{n:g} dB', or a linear gain >= 0 such as 0.5")
        return -math.inf if n == 0 else 20.0 * math.log10(n)
    if isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in ("db", "dbfs"):
            return parts[0]
        if value.strip().lower() in ("-inf db", "-inf", "silent", "off"):
            return -math.inf
    raise ValueError(f"{show(value)} is not a level; write e.g. '-6 dB' or 0.5")


def parse_db(value: Any, what: str = "gain") -> float:
    """Decibels from ``-6`` or ``"-6 dB"`` (numbers are read as dB here)."""
    n = _check_number(value)
    if n is not None:
        return n
    if isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in ("db", "dbfs", ""):
            return parts[0]
    raise ValueError(f"{show(value)} is not a {what} in dB; write e.g. -6 or '-6 dB'")


def parse_lufs(value: Any) -> float:
    """Integrated loudness target from ``-16`` or ``"-16 LUFS"`` (LKFS accepted)."""
    n = _check_number(value)
    if n is None and isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in ("lufs", "lkfs", ""):
            n = parts[0]
    if n is None:
        raise ValueError(f"{show(value)} is not a loudness; write e.g. '-16 LUFS' or -16")
    if not -70.0 <= n <= 0.0:
        raise ValueError(f"{show(value)} is outside -70..0 LUFS; typical targets are -23 "
                         f"(broadcast), -16 (podcasts, games) or -14 (streaming)")
    return n


def parse_dbtp(value: Any) -> float:
    """True-peak ceiling from ``-1`` or ``"-1 dBTP"``."""
    n = _check_number(value)
    if n is None and isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in ("dbtp", "db", ""):
            n = parts[0]
    if n is None:
        raise ValueError(f"{show(value)} is not a true-peak ceiling; write e.g. '-1 dBTP' or -1")
    if not -20.0 <= n <= 0.0:
        raise ValueError(f"{show(value)} is outside -20..0 dBTP; -1 dBTP is the usual ceiling")
    return n


def parse_hz(value: Any) -> float:
    """Hertz from ``8000``, ``"8 kHz"`` or ``"500 Hz"``."""
    n = _check_number(value)
    if n is None and isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in _FREQ_UNITS:
            n = parts[0] * _FREQ_UNITS[parts[1].lower()]
    if n is None or n <= 0:
        raise ValueError(f"{show(value)} is not a frequency; write e.g. 8000, '8 kHz' or '500 Hz'")
    return n


def parse_ms(value: Any) -> float:
    """Milliseconds from ``30`` (ms), ``"30 ms"`` or ``"0.03 s"``."""
    n = _check_number(value)
    if n is not None:
        return n
    if isinstance(value, str):
        parts = _split(value)
        if parts and parts[1].lower() in ("ms", ""):
            return parts[0]
        if parts and parts[1].lower() in _TIME_UNITS:
            return parts[0] * _TIME_UNITS[parts[1].lower()] * 1000.0
    raise ValueError(f"{show(value)} is not a time in milliseconds; write e.g. 30 or '30 ms'")


def parse_float(value: Any) -> float:
    """A plain number (no unit)."""
    n = _check_number(value)
    if n is None:
        raise ValueError(f"{show(value)} is not a number; write e.g. 0.5")
    return n


def format_duration(seconds: float) -> str:
    """``83.5`` -> ``'1:23.50'``; short values stay in seconds."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    m, s = divmod(seconds, 60.0)
    return f"{int(m)}:{s:05.2f}"
