"""Process-level settings: fast attack loops on the CPU, reproducible numbers on CUDA; which device, and its OOM."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from bench.errors import UserError

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def tune_malloc() -> bool:
    """Stop glibc from returning freed memory to the OS after every iteration (Linux/glibc only).

    By default glibc serves large blocks with mmap and trims the heap top on free, so every iteration of a
    double-backward loop page-faults its big temporaries in again. Serving them from the heap and never
    trimming keeps the memory mapped: 16-73% faster per iteration in docs/performance.md, peak memory
    unchanged. glibc still falls back to mmap when the heap cannot grow, so no allocation can fail by it.
    Returns whether the setting took (False on other platforms or C libraries, where nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): the default allocator stays, which is only slower
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_device(device: torch.device, *, allow_tf32: bool) -> None:
    """Make CUDA runs reproducible and comparable to the CPU's float32 (a no-op elsewhere).

    TF32 convolutions and matmuls differ from float32 by about 1e-3, so they stay off unless asked for;
    cuDNN is held to deterministic algorithms and PyTorch warns about any op that has none.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read when it starts)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(name: str, profile: str = "quick") -> torch.device:
    """The device ``name`` stands for; ``auto`` picks CUDA when present, but never runs paper budgets on a CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if profile == "paper":
            raise UserError(
                "profile=paper on a machine without a GPU runs for hours per trial; pass device=cpu to mean it"
            )
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but CUDA is not available; use device=auto or device=cpu")
    return torch.device(name)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's, cuDNN's and cuBLAS's ways of running out of memory (the last two raise plain RuntimeErrors)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory")
    )
