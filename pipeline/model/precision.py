"""Which number format the model computes in, chosen at run time from what the device does well.

``auto``: half precision (float16) on a GPU; bfloat16 on a CPU that has bfloat16 matrix units
(AMX, or AVX-512 BF16) *and* multiplies bfloat16 matrices measurably faster than float32 here;
float32 elsewhere (a CPU without them emulates bfloat16 more slowly than it does float32).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Precision
from pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# CPU flags (Linux /proc/cpuinfo) of bfloat16 matrix instructions.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# bfloat16 is chosen only when its matrix products run at least this much faster than float32's.
MIN_BF16_SPEEDUP = 1.5


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where the system does not say)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_kind(flags: frozenset[str] | None = None) -> str:
    """The CPU's matrix kind, as the bench prints it: ``amx``, ``avx512_bf16``, ``avx512``,
    ``avx2`` or ``other`` (what decides which kernels and precision pay here)."""
    flags = cpu_flags() if flags is None else flags
    for kind, flag in (
        ("amx", "amx_bf16"),
        ("avx512_bf16", "avx512_bf16"),
        ("avx512", "avx512f"),
        ("avx2", "avx2"),
    ):
        if flag in flags:
            return kind
    return "other"


def _matmul_s(dtype: torch.dtype, n: int = 512, runs: int = 5) -> float:
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # first call: oneDNN builds its kernel
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_speedup() -> float:
    """How much faster this CPU multiplies bfloat16 matrices than float32 ones (0: no bf16 units).

    Measured once per process (a few milliseconds) on a 512³ product, only where the CPU has the
    flags: the flags say the units exist, the measurement that they pay here.
    """
    if not cpu_flags() & set(BF16_FLAGS):
        return 0.0
    import torch

    return _matmul_s(torch.float32) / _matmul_s(torch.bfloat16)


def resolve(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype the encoder and mask decoder run in on ``device``.

    Raises:
        InvalidInputError: float16 asked for on a CPU (no CPU here runs it fast: a hundredfold
            slower than float32 was measured), or bfloat16 on a GPU without it.
    """
    import torch

    if precision is Precision.FP32:
        return torch.float32
    if device.type == "cuda":
        if precision is Precision.BF16 and not torch.cuda.is_bf16_supported():
            raise InvalidInputError("--precision bf16: this GPU has no bfloat16; use fp16 or fp32")
        return torch.bfloat16 if precision is Precision.BF16 else torch.float16
    if precision is Precision.FP16:
        raise InvalidInputError("--precision fp16 runs on a GPU only; on a CPU use bf16 or fp32 (or auto)")
    if precision is Precision.BF16:
        return torch.bfloat16
    return torch.bfloat16 if cpu_bf16_speedup() >= MIN_BF16_SPEEDUP else torch.float32


def name(dtype: torch.dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how the CLI and the bench spell a dtype."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
