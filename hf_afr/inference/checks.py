"""Checking a converted block against itself: a fixed probe input and a scaled tolerance."""

from __future__ import annotations

import math

import torch


def probe_input(hidden: int, dtype: torch.dtype, device: torch.device, tokens: int = 7):
    """A fixed random `(2, tokens, hidden)` input for checking a block before and after."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, tokens, hidden, generator=generator, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


def default_atol(dtype: torch.dtype) -> float:
    """Tolerance of the output checks, relative to the output scale: float32 1e-4, 16-bit 2e-2."""
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None) -> bool:
    """`max |actual - expected| <= atol * max(1, max |expected|)` (atol from the dtype if None)."""
    atol = default_atol(expected.dtype) if atol is None else atol
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    diff = float((actual.double() - expected.double()).abs().max()) if expected.numel() else 0.0
    return math.isfinite(diff) and diff <= atol * scale
