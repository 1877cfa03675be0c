"""SNIP + ReFer combinations of the combination study (benchmarks/combined_criteria.py), against
hand-worked and numpy masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import AFRPruner, PrunerConfig, select_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from combined_criteria import (  # noqa: E402  (registers refer_snip_log_z)
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


def scores_of(method, batches, sparsity=0.9):
    config = PrunerConfig(method=method, sparsity=sparsity, num_batches=2)
    return AFRPruner(tiny_vit(), config).compute_scores(batches, show_progress=False)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_budget_rank_split_of_real_scores_matches_numpy(sparsity):
    batches = tiny_batches()
    refer, snip = scores_of("refer", batches), scores_of("snip", batches)
    expected = expected_split_masks(refer, snip, sparsity)
    masks = select_masks(budget_rank_scores(refer, snip, sparsity), sparsity)
    assert set(masks) == set(expected)
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask.numpy(), expected[name], err_msg=name)
    # Not vacuous: the split differs from both ReFer's and SNIP's own global masks.
    for own in (select_masks(refer, sparsity), select_masks(snip, sparsity)):
        assert any(not torch.equal(own[n], masks[n]) for n in masks)


def numpy_log_z(refer, snip, alpha):
    """z(log(r + r_min)) + alpha * z(log(s + s_min)) in float64, r_min/s_min the smallest
    positive scores, z over all weights."""
    names = list(refer)

    def zlog(scores):
        flat = np.concatenate([scores[n].double().numpy().ravel() for n in names])
        x = np.log(flat + flat[flat > 0].min())
        return (x - x.mean()) / x.std()

    total = zlog(refer) + alpha * zlog(snip)
    out, start = {}, 0
    for n in names:
        out[n] = total[start : start + refer[n].numel()].reshape(refer[n].shape)
        start += refer[n].numel()
    return out


def test_refer_snip_log_z_criterion_matches_numpy():
    batches = tiny_batches()
    expected = numpy_log_z(scores_of("refer", batches), scores_of("snip", batches), 0.5)
    got = scores_of("refer_snip_log_z", batches)
    for name in expected:
        np.testing.assert_allclose(got[name].numpy(), expected[name], atol=1e-4, err_msg=name)
    # Not vacuous: the masks differ from ReFer's, SNIP's and AFR's.
    masks = select_masks(got, 0.9)
    for method in ("refer", "snip", "afr"):
        own = select_masks(scores_of(method, batches), 0.9)
        assert any(not torch.equal(own[n], masks[n]) for n in masks), method


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
