"""Generator stage: which floating-point precision the language model runs at.

Input: the ``--precision`` choice (auto, fp32, bf16, fp16), the device and the CPU's feature
flags. Output: a concrete precision name. No torch import here: the choice is printed in the cost
line before anything heavy loads.

``auto`` picks bf16 on CPUs with native bfloat16 arithmetic (AVX-512 BF16 or AMX), where it halves
the bytes read per decoding step (the step is memory-bound) and runs on the matrix units; fp16 on
GPUs (AudioGen was trained with fp16 autocast, and audiocraft itself runs it in fp16 there); fp32
elsewhere, since emulated bf16/fp16 on a CPU without those instructions is slower than fp32.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GeneratorError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)


def choose_precision(requested: str, device: str, flags: frozenset[str] | None = None) -> str:
    """The concrete precision (fp32, bf16 or fp16) for ``requested`` on ``device``.

    Args:
        requested: auto, fp32, bf16 or fp16.
        device: the resolved device: cpu, cuda or mps.
        flags: CPU feature flags (tests); read from /proc/cpuinfo when None.
    """
    if requested not in PRECISIONS:
        raise GeneratorError(f"unknown precision {requested!r}; use one of "
                             f"{', '.join(PRECISIONS)}")
    if requested != "auto":
        if requested == "bf16" and device == "mps":
            raise GeneratorError("--precision bf16 is not supported on MPS; use auto, fp16 "
                                 "or fp32")
        return requested
    if device == "cpu":
        return "bf16" if cpu_has_native_bf16(flags) else "fp32"
    return "fp16"  # cuda, mps: half precision is audiocraft's own operating point there
