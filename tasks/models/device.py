"""Device and mixed-precision choice shared by the model wrappers."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(pref: str = "auto") -> torch.device:
    """Turn ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a device."""
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


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
