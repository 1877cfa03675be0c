"""AFR: z(ReFer) + z(SNIP), each z-scored over all scored weights so both weigh equally.

`sum_of_z_scores(a, b)` is AFR's combination step on its own, for any two criteria's scores
(e.g. from `get_criterion(name).score`): each set weighs equally whatever its scale.
"""

from __future__ import annotations

import torch

from .gradients import accumulate_gradients, connection_sensitivity
from .registry import register_criterion

# Below this ratio of variance to mean square, E[s^2] - E[s]^2 would cancel too many digits.
_ONE_PASS_MIN_RELATIVE_VARIANCE = 1e-3


def score_moments(scores: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean and population std over the union of all tensors.

    One reading pass per tensor: its sum and L2 norm (pairwise/tree reductions in float32,
    no temporaries), combined in float64 as E[s^2] - E[s]^2. Where the variance is tiny
    against the mean square, so that difference would lose precision, or a float32 sum
    overflows, an exact two-pass variance in float64 is used instead.
    """
    n = sum(s.numel() for s in scores.values())
    values = list(scores.values())
    sums = torch.stack([s.sum(dtype=torch.float32) for s in values]).double()
    norms = torch.stack([torch.linalg.vector_norm(s.float()) for s in values]).double()
    mean = sums.sum() / n
    mean_square = norms.square().sum() / n
    var = mean_square - mean.square()
    if not var > _ONE_PASS_MIN_RELATIVE_VARIANCE * mean_square:  # also when inf or NaN
        var = sum((s.double() - mean).square_().sum() for s in values) / n
    std = var.clamp(min=0).sqrt().item()
    if not (torch.isfinite(mean) and std > 0 and std < float("inf")):
        raise ValueError(
            "Cannot standardise scores whose standard deviation is zero or not finite "
            f"(std={std}): all scored weights got the same score."
        )
    return mean.item(), std


def standardize(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Z-score in place over the union of all tensors: (s - mean) / std (population std)."""
    mean, std = score_moments(scores)
    for s in scores.values():
        s.sub_(mean).div_(std)
    return scores


def sum_of_z_scores(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """z(a) + z(b), z-scores over all tensors, written into `a`'s tensors (`a` is consumed).

    Computed as a / std_a + b / std_b - (mean_a / std_a + mean_b / std_b): three in-place
    passes over `a` and one reading pass over `b`.

    Args:
        a (`dict[str, Tensor]`): scores by parameter name; overwritten with the result.
        b (`dict[str, Tensor]`): scores of the same names and shapes.
    """
    mean_a, std_a = score_moments(a)
    mean_b, std_b = score_moments(b)
    shift = mean_a / std_a + mean_b / std_b
    return {name: s.div_(std_a).add_(b[name], alpha=1 / std_b).sub_(shift) for name, s in a.items()}


@register_criterion("afr", needs_labels=True, reads_features=True)
def afr_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """z(|dL/dw * w|) + z(|dR/dw * w|), both gradients from one shared forward pass per batch."""
    loss_grads, refer_grads = accumulate_gradients(
        model, batches, params, config, objectives=("loss", "refer")
    )
    return sum_of_z_scores(
        connection_sensitivity(loss_grads, params), connection_sensitivity(refer_grads, params)
    )
