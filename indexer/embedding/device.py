"""Which device and dtype a model runs in.

``auto`` means CUDA, then MPS, then the CPU; float32 on the CPU (exact parity
with sentence-transformers) and bfloat16 on CUDA (float16 where bf16 is
missing). torch is imported inside the functions.

>>> pick_dtype("auto", pick_device("cpu"))                       # doctest: +SKIP
torch.float32
"""
from __future__ import annotations

import logging
from typing import Any

from mitsuke.indexer.errors import ModelError

__all__ = ["pick_device", "pick_dtype", "cpu_has_amx_bf16", "warn_if_slow_on_cpu"]

log = logging.getLogger("mitsuke")

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


def pick_device(device: str) -> Any:
    """The ``torch.device`` for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; :class:`ModelError` otherwise."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def pick_dtype(dtype: str, device: Any) -> Any:
    """fp32 on CPU unless asked (exact parity); bf16 on CUDA, fp16 where bf16 is missing."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[dtype])


def cpu_has_amx_bf16() -> bool | None:
    """Whether the CPU has AMX-BF16 tiles (Linux /proc/cpuinfo); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        return None
    return None


def warn_if_slow_on_cpu(device: Any, dtype: Any) -> None:
    """Log a warning for a half-precision dtype on a CPU known to lack AMX-BF16."""
    import torch

    if device.type == "cpu" and dtype != torch.float32 and cpu_has_amx_bf16() is False:
        # BENCHMARKS.md "Embedding": bf16 ran ~2x slower than fp32 on an avx512_bf16-only Xeon.
        log.warning("%s on a CPU without AMX-BF16 is usually slower than float32; "
                    "use --dtype float32 unless you have measured otherwise", str(dtype)[6:])
