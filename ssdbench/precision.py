"""Compute precision: dtype names and autocast, once for training, evaluation and inference."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # None = no autocast


def autocast(device: torch.device | str, dtype: torch.dtype | str | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for None / fp32."""
    if isinstance(dtype, str):
        dtype = AMP_DTYPES[dtype]
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
