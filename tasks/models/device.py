"""Device and mixed-precision choice shared by the model wrappers."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(pref: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a device) into
    a device."""
    if isinstance(pref, torch.device):
        pref = str(pref)
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as e:
        raise ValueError(f"unknown device {pref!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {pref!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


IMAGES_PER_BATCH = {"cpu": 1, "cuda": 8}
"""Images an image model (SAM's encoder, the feature backbone) takes in one forward pass unless told: one on a
CPU, where the run's worker threads already keep every core busy, and eight on CUDA, where one image leaves most
of the GPU idle."""


def images_per_batch(device: torch.device, batch: int | None = None) -> int:
    """``batch`` when given (at least 1), else the default of ``device``'s type (:data:`IMAGES_PER_BATCH`)."""
    if batch is None:
        return IMAGES_PER_BATCH[device.type]
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    return batch


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


MEASURED_SECONDS_PER_IMAGE = {"cpu": (7.6, 2)}
"""Measured wall seconds a run takes per image at default parameters, and the cores it ran on, by device type
(BENCHMARKS.md, "Throughput": 471 images an hour on 2 CPU cores, the whole flow on the sample). CUDA has no
measured figure."""
