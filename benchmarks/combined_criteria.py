"""Combinations of SNIP and ReFer other than AFR's sum of z-scores (the combination study's).

AFR adds z(ReFer) and z(SNIP) over all weights. Both scores are heavy tailed, so the top of
AFR's ranking is mostly ReFer's and SNIP mainly reorders the bulk. The functions here combine
the two where each may be informative instead; `benchmarks/combination_study.py` compares them
on a validation split carved from the training data:

- `budget_rank_scores(budget, rank, ...)`: the per-tensor kept counts of a global selection
  by one criterion (where to keep weights), the ranking inside each tensor by the other
  (which weights to keep there);
- `log_sum_scores(a, b)`: log(a) + log(b), i.e. ranking by the product (geometric mean);
- `log_z_scores(a, b, alpha)`: z(log a) + alpha * z(log b), a mixing weight on log-scores.

Importing this module registers, through hf_afr's public `register_criterion`, the criterion
`refer_snip_log_z`: the candidate that did best on validation, z(log ReFer) + 0.5 * z(log SNIP).
It did not beat ReFer reliably (docs/science.md), so it is a benchmark criterion, not one of
hf_afr's; `afr` stays the paper's definition.
"""

from __future__ import annotations

import torch

from hf_afr import available_criteria, register_criterion, select_masks
from hf_afr.criteria.afr import standardize
from hf_afr.criteria.gradients import accumulate_gradients, connection_sensitivity


def within_tensor_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry inside its tensor, scaled to [0, 1): 0 for the lowest score.

    Ties are ranked by position (the earlier entry ranks lower), as `select_masks` breaks them.
    """
    flat = scores.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    ranks = torch.empty(flat.numel(), dtype=torch.float32, device=flat.device)
    ranks[order] = torch.arange(flat.numel(), dtype=torch.float32, device=flat.device)
    return (ranks / flat.numel()).view(scores.shape)


def budget_rank_scores(
    budget: dict[str, torch.Tensor],
    rank: dict[str, torch.Tensor],
    sparsity: float,
    min_density: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Scores whose global selection at `sparsity` keeps, in every tensor, as many weights as
    the global selection by `budget` keeps there, chosen by `rank` inside the tensor.

    A kept weight scores 1 + its within-tensor rank by `rank`, a pruned one its rank alone
    (in [0, 1)), so `select_masks(scores, sparsity, "global", min_density)` gives exactly
    these masks. The scores are meant for that sparsity: at another one the budgets differ.

    Args:
        budget (`dict[str, Tensor]`): scores deciding each tensor's kept count.
        rank (`dict[str, Tensor]`): scores deciding the kept weights inside each tensor.
        sparsity (`float`): the global sparsity the budgets are computed for.
        min_density (`float`, defaults to 0.0): per-tensor floor, as in `select_masks`.
    """
    if set(budget) != set(rank):
        raise ValueError(
            f"`budget` and `rank` must score the same tensors; differing names: "
            f"{sorted(set(budget) ^ set(rank))[:5]}."
        )
    kept = select_masks(budget, sparsity, "global", min_density)
    out = {}
    for name, mask in kept.items():
        ranks = within_tensor_ranks(rank[name])
        num_kept = int(mask.sum())
        flat = ranks.reshape(-1)
        top = torch.topk(flat, num_kept).indices if num_kept else flat.new_empty(0).long()
        flat = flat.clone()
        flat[top] += 1.0
        out[name] = flat.view(ranks.shape)
    return out


def _log(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """log(s + tiny), with tiny the smallest positive score (zero scores rank lowest)."""
    positive = [s[s > 0].min() for s in scores.values() if bool((s > 0).any())]
    if not positive:
        raise ValueError("Cannot take logs of scores that are all zero.")
    tiny = torch.stack(positive).min().item()
    return {name: torch.log(s.double() + tiny).float() for name, s in scores.items()}


def log_sum_scores(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """log(a) + log(b): ranks by the product a * b (the geometric mean)."""
    la, lb = _log(a), _log(b)
    return {name: la[name] + lb[name] for name in la}


def log_z_scores(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float = 1.0
) -> dict[str, torch.Tensor]:
    """z(log a) + alpha * z(log b), z-scores over all weights."""
    la, lb = standardize(_log(a)), standardize(_log(b))
    return {name: la[name] + alpha * lb[name] for name in la}


# The mixing weight of `refer_snip_log_z`, chosen on validation splits by
# `benchmarks/combination_study.py` (never on a test split).
LOG_Z_ALPHA = 0.5


def refer_snip_log_z_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """z(log ReFer) + 0.5 * z(log SNIP), both gradients from one shared forward pass per batch."""
    loss_grads, refer_grads = accumulate_gradients(
        model, batches, params, config, objectives=("loss", "refer")
    )
    snip = connection_sensitivity(loss_grads, params)
    refer = connection_sensitivity(refer_grads, params)
    return log_z_scores(refer, snip, alpha=LOG_Z_ALPHA)


if "refer_snip_log_z" not in available_criteria():  # a module loaded twice registers once
    register_criterion("refer_snip_log_z", needs_labels=True, reads_features=True)(
        refer_snip_log_z_scores
    )
