import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_afr import select_masks
from hf_afr.masks import apply_masks, check_scores, nonzero_where_pruned

shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4)
sparsities = st.floats(0.0, 0.999, allow_nan=False)


def make_scores(shape_list, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    return {
        f"w{i}": (
            torch.randint(0, 3, s, generator=g).float() if ties else torch.rand(s, generator=g)
        )
        for i, s in enumerate(shape_list)
    }


@settings(max_examples=60, deadline=None)
@given(shapes, sparsities, st.integers(0, 1000), st.booleans())
def test_global_selection_is_exact_and_keeps_the_highest_scores(shape_list, sparsity, seed, ties):
    scores = make_scores(shape_list, seed, ties)
    masks = select_masks(scores, sparsity, "global")
    n = sum(s.numel() for s in scores.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(sparsity * n)
    kept = torch.cat([scores[k][masks[k]] for k in scores])
    dropped = torch.cat([scores[k][~masks[k]] for k in scores])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


@settings(max_examples=60, deadline=None)
@given(shapes, sparsities, st.integers(0, 1000))
def test_layerwise_selection_is_exact_per_tensor(shape_list, sparsity, seed):
    scores = make_scores(shape_list, seed)
    masks = select_masks(scores, sparsity, "layerwise")
    for name, m in masks.items():
        assert int((~m).sum()) == round(sparsity * m.numel())
        if m.any() and (~m).any():
            assert scores[name][m].min() >= scores[name][~m].max()


@settings(max_examples=40, deadline=None)
@given(shapes, st.floats(0.5, 0.95), st.floats(0.0, 0.05), st.integers(0, 1000))
def test_min_density_guard_keeps_a_floor_in_every_tensor(shape_list, sparsity, min_density, seed):
    scores = make_scores(shape_list, seed)
    n = sum(s.numel() for s in scores.values())
    floor = sum(math.ceil(min_density * s.numel() - 1e-9) for s in scores.values())
    if floor > n - round(sparsity * n):  # infeasible: a clear error instead of a wrong count
        with pytest.raises(ValueError, match="min_density"):
            select_masks(scores, sparsity, "global", min_density=min_density)
        return
    masks = select_masks(scores, sparsity, "global", min_density=min_density)
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * n)
    for m in masks.values():
        assert int(m.sum()) >= math.ceil(min_density * m.numel() - 1e-9)


def test_ties_are_broken_by_position_deterministically():
    scores = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    masks = select_masks(scores, 0.5, "global")
    assert masks["a"].reshape(-1).tolist() == [False] * 5 + [True]
    assert masks["b"].tolist() == [True] * 4


def test_global_allocation_can_prune_a_whole_tensor_and_the_guard_prevents_it():
    scores = {"low": torch.full((4, 4), 0.1), "high": torch.rand(4, 4) + 1}
    assert not select_masks(scores, 0.5)["low"].any()
    guarded = select_masks(scores, 0.5, min_density=0.25)
    assert int(guarded["low"].sum()) == 4


def test_bad_arguments():
    scores = {"a": torch.rand(3)}
    with pytest.raises(ValueError, match="sparsity"):
        select_masks(scores, 1.0)
    with pytest.raises(ValueError, match="scope"):
        select_masks(scores, 0.5, scope="rows")
    with pytest.raises(ValueError, match="nothing to prune"):
        select_masks({}, 0.5)
    with pytest.raises(ValueError, match="min_density"):
        select_masks({"a": torch.rand(10)}, 0.9, min_density=0.5)


def test_non_finite_scores_name_the_parameter():
    params = {"enc.fc1.weight": torch.nn.Parameter(torch.ones(2, 2))}
    with pytest.raises(ValueError, match="enc.fc1.weight"):
        check_scores({"enc.fc1.weight": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, params)


def test_apply_masks_sets_exact_zeros_even_for_nan_weights():
    p = torch.nn.Parameter(torch.tensor([1.0, float("nan"), -2.0]))
    apply_masks({"p": p}, {"p": torch.tensor([True, False, False])})
    assert p.tolist() == [1.0, 0.0, 0.0]
    assert not torch.signbit(p[2])


def test_nonzero_where_pruned_counts_by_hand():
    weights = {"a": torch.tensor([[1.0, 0.0], [2.0, 3.0]]), "b": torch.tensor([0.0, 5.0])}
    masks = {"a": torch.tensor([[False, False], [True, False]]), "b": torch.tensor([False, True])}
    # "a" prunes 1.0, 0.0 and 3.0: two nonzeros; "b" prunes its 0.0: none.
    assert nonzero_where_pruned(weights, masks) == {"a": 2}
    uint8 = {name: m.to(torch.uint8) for name, m in masks.items()}
    assert nonzero_where_pruned(weights, uint8) == {"a": 2}
    with pytest.raises(ValueError, match="has shape"):
        nonzero_where_pruned(weights, {"b": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not a parameter"):
        nonzero_where_pruned(weights, {"c": torch.ones(2, dtype=torch.bool)})
