"""Devices and threads: which torch device a run uses, and BLAS kept on one thread while a probe runs."""

from __future__ import annotations

import contextlib

import torch

from audit.api.errors import UsageError


def single_threaded_blas():
    """NumPy/SciPy's BLAS on one thread while a probe runs; torch keeps its intra-op threads.

    Both pools busy-wait: with torch's OpenMP threads and OpenBLAS's threads on the same cores, a probe that
    alternates small torch and NumPy products slowed 20-40× on 2 cores (measured: the embedding probe on the
    demo, 3.7 s pinned, 155 s unpinned with one other busy process). A probe's heavy products go through
    torch, on the job's device, so NumPy loses little by running on one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency; stay usable without it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def resolve_device(requested: str, where: str = "--device") -> torch.device:
    """auto → the first CUDA device when there is one, else the CPU; cuda[:N] must exist. ``where`` names
    what asked for it in error messages (the flag, or the config file's `device` key)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"{where}: expected auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{where} = {requested}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{where} = {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"{where}: expected auto, cpu, cuda or cuda:N, got {requested!r}")
    return device
