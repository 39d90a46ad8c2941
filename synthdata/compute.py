"""How a worker computes: its device, its torch threads, and its numeric precision.

Every Ray task of a study calls `configure_worker` first: torch gets as many threads as
the CPUs Ray reserved for the task (more would oversubscribe the cores other tasks
hold), and the precision mode for the process. Training and sampling code then wraps
its forward passes in `autocast(device)`, which is a no-op in fp32.

Precision `auto` uses bf16 autocast (and TF32 matmuls) on GPUs that support them, where
they are several times faster, and plain fp32 on CPUs, where bf16 without native
support is slower and TF32 does not exist. The optimizer state and weights stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

_precision = "auto"


def device_for(gpus: float) -> str:
    """cuda when the task was given a GPU and one is visible, else cpu."""
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def set_precision(mode: str) -> None:
    """The process's precision mode: auto, fp32 or bf16."""
    global _precision
    if mode not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {mode!r}")
    _precision = mode
    if torch.cuda.is_available():  # TF32 matmuls and convolutions: fp32 storage, faster tensor-core math
        fast = mode != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast


def precision_mode() -> str:
    """The process's precision mode (what `set_precision` set): an arm hands it to the actors it trains and samples with."""
    return _precision


def autocast_dtype(device: str) -> torch.dtype | None:
    """The autocast dtype for `device` under the current mode (None: full fp32)."""
    if _precision == "fp32":
        return None
    if _precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: str) -> ContextManager:
    """bf16 autocast on `device` when the precision mode asks for it there, else nothing."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def configure_worker(resources) -> str:
    """Threads and precision for this process from a study's `resources`; returns the device to use."""
    torch.set_num_threads(max(1, int(resources.cpus_per_arm)))
    set_precision(resources.precision)
    return device_for(resources.gpus_per_arm)
