"""Magnitude baseline: score = |w|."""

from __future__ import annotations

import torch

from .registry import register_criterion


@register_criterion("magnitude", needs_data=False)
def magnitude_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """|w| for every prunable weight; reads no data."""
    with torch.no_grad():
        return {name: p.detach().float().abs() for name, p in params.items()}
