"""AFR: z(ReFer) + z(SNIP), each z-scored over all scored weights so both weigh equally."""

from __future__ import annotations

import torch

from . import register_criterion
from .gradients import accumulate_gradients, connection_sensitivity


def standardize(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Z-score in place over the union of all tensors: (s - mean) / std.

    Population std from a two-pass mean and variance with float64 sums; the tensors themselves
    stay float32 and are overwritten (one tensor-sized temporary at a time).
    """
    n = sum(s.numel() for s in scores.values())
    mean = sum(torch.sum(s, dtype=torch.float64) for s in scores.values()) / n
    var = sum(torch.sum((s - mean).square_(), dtype=torch.float64) for s in scores.values()) / n
    std = var.sqrt()
    if not torch.isfinite(std) or std == 0:
        raise ValueError(
            "Cannot standardise scores whose standard deviation is zero or not finite "
            f"(std={std.item()}): all scored weights got the same score."
        )
    for s in scores.values():
        s.sub_(mean).div_(std)
    return scores


@register_criterion("afr", needs_labels=True)
def afr_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """z(|dR/dw * w|) + z(|dL/dw * w|), both gradients from one shared forward pass per batch."""
    loss_grads, refer_grads = accumulate_gradients(
        model, batches, params, config, objectives=("loss", "refer")
    )
    snip = standardize(connection_sensitivity(loss_grads, params))
    refer = standardize(connection_sensitivity(refer_grads, params))
    return {name: snip[name].add_(refer[name]) for name in params}
