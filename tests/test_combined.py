"""SNIP + ReFer combinations (hf_afr.criteria.combined), against hand-worked and numpy masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import AFRPruner, PrunerConfig, select_masks
from hf_afr.criteria.combined import (
    budget_rank_scores,
    log_sum_scores,
    log_z_scores,
    within_tensor_ranks,
)


def test_budget_rank_split_on_a_hand_worked_case():
    # Keeping 3 of 6 by `budget` keeps a[0], a[1] (9, 8) and b[2] (7): budgets a: 2, b: 1.
    budget = {"a": torch.tensor([9.0, 8.0, 1.0]), "b": torch.tensor([2.0, 3.0, 7.0])}
    # Inside a, `rank` prefers a[2] then a[0]; inside b, b[0].
    rank = {"a": torch.tensor([5.0, 1.0, 6.0]), "b": torch.tensor([9.0, 0.0, 4.0])}
    masks = select_masks(budget_rank_scores(budget, rank, sparsity=0.5), 0.5)
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].tolist() == [True, False, False]


def test_within_tensor_ranks_break_ties_by_position():
    ranks = within_tensor_ranks(torch.tensor([[2.0, 1.0], [2.0, 0.0]]))
    assert ranks.tolist() == [[0.5, 0.25], [0.75, 0.0]]


def expected_split_masks(budget, rank, sparsity):
    """Budgets by a numpy argsort over all weights, then a numpy argsort inside each tensor."""
    names = list(budget)
    flat = np.concatenate([budget[n].numpy().ravel() for n in names])
    keep = flat.size - round(sparsity * flat.size)
    owner = np.repeat(np.arange(len(names)), [budget[n].numel() for n in names])
    kept_counts = np.bincount(owner[np.argsort(-flat)[:keep]], minlength=len(names))
    masks = {}
    for i, n in enumerate(names):
        r = rank[n].numpy().ravel()
        m = np.zeros(r.size, dtype=bool)
        m[np.argsort(-r)[: kept_counts[i]]] = True
        masks[n] = m.reshape(rank[n].shape)
    return masks


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_refer_budget_snip_rank_criterion_matches_numpy(sparsity):
    batches = tiny_batches()

    def scores(method):
        config = PrunerConfig(method=method, sparsity=sparsity, num_batches=2)
        return AFRPruner(tiny_vit(), config).compute_scores(batches, show_progress=False)

    expected = expected_split_masks(scores("refer"), scores("snip"), sparsity)
    config = PrunerConfig(method="refer_budget_snip_rank", sparsity=sparsity, num_batches=2)
    pruner = AFRPruner(tiny_vit(), config)
    masks = pruner.prune(batches, show_progress=False)
    assert set(masks) == set(expected)
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask.numpy(), expected[name], err_msg=name)
    # Not vacuous: the split differs from both ReFer's and SNIP's own global masks.
    for method in ("refer", "snip"):
        own = select_masks(scores(method), sparsity)
        assert any(not torch.equal(own[n], masks[n]) for n in masks), method


def test_layerwise_scope_ranks_by_snip_inside_each_tensor():
    batches = tiny_batches()
    config = PrunerConfig(method="snip", sparsity=0.7, scope="layerwise", num_batches=2)
    snip_masks = AFRPruner(tiny_vit(), config).prune(batches, show_progress=False)
    config = PrunerConfig(
        method="refer_budget_snip_rank", sparsity=0.7, scope="layerwise", num_batches=2
    )
    masks = AFRPruner(tiny_vit(), config).prune(batches, show_progress=False)
    assert all(torch.equal(masks[n], snip_masks[n]) for n in masks)


def test_log_combinations_rank_by_product_and_by_weighted_log_z():
    generator = torch.Generator().manual_seed(0)
    a = {"x": torch.rand(50, generator=generator) + 1e-3}
    b = {"x": torch.rand(50, generator=generator) + 1e-3}
    a["x"][7] = 0.0  # a zero score: logs of s + (smallest positive score), so it ranks lowest
    x, y = a["x"].double().numpy(), b["x"].double().numpy()
    x, y = x + x[x > 0].min(), y + y.min()
    np.testing.assert_allclose(log_sum_scores(a, b)["x"].numpy(), np.log(x * y), atol=1e-5)
    la, lb = np.log(x), np.log(y)
    z = (la - la.mean()) / la.std() + 0.5 * (lb - lb.mean()) / lb.std()
    np.testing.assert_allclose(log_z_scores(a, b, 0.5)["x"].numpy(), z, atol=1e-4)


def test_budget_rank_scores_need_the_same_tensors():
    with pytest.raises(ValueError, match="same tensors"):
        budget_rank_scores({"a": torch.ones(2)}, {"b": torch.ones(2)}, 0.5)
