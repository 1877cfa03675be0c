"""The sanity-check controls (shuffle, invert, magnitude_inside) against plain re-derivations."""

import numpy as np
import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.controls import controlled_masks


def prune(control=None, method="snip", **kwargs):
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method=method, control=control, **kwargs))
    original = {n: p.detach().clone() for n, p in pruner.params.items()}
    scores = pruner.compute_scores(tiny_batches(1), show_progress=False)
    pruner.prune(tiny_batches(1), show_progress=False)
    return pruner, scores, original


def kept_counts(masks):
    return {name: int(m.sum()) for name, m in masks.items()}


def keep_highest(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """The top scores of the tensors taken together, by sorting (a second implementation)."""
    flat = torch.cat([s.flatten() for s in scores.values()]).double()
    keep = flat.numel() - round(sparsity * flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    assert flat[order[keep - 1]] > flat[order[keep]]  # no tie at the boundary
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[order[:keep]] = True
    return dict(zip(scores, kept.split([s.numel() for s in scores.values()])))


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_control_none_is_the_plain_selection(scope):
    pruner, scores, _ = prune(scope=scope, sparsity=0.8)
    if scope == "global":
        expected = keep_highest(scores, 0.8)
    else:
        expected = {n: keep_highest({n: s}, 0.8)[n] for n, s in scores.items()}
    for name, mask in expected.items():
        assert torch.equal(pruner.masks[name].flatten(), mask), name


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_shuffle_keeps_per_tensor_counts_and_is_seeded(scope):
    plain, scores, _ = prune(scope=scope, sparsity=0.8)
    a, _, _ = prune("shuffle", scope=scope, sparsity=0.8, seed=1)
    b, _, _ = prune("shuffle", scope=scope, sparsity=0.8, seed=1)
    c, _, _ = prune("shuffle", scope=scope, sparsity=0.8, seed=2)
    assert kept_counts(a.masks) == kept_counts(plain.masks)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], plain.masks[n]) for n in a.masks)
    for name, p in a.params.items():  # applied to the weights
        assert torch.equal(p.detach() != 0, a.masks[name])


def test_invert_keeps_the_lowest_scored_weights():
    plain, scores, _ = prune(sparsity=0.7)
    inverted, _, _ = prune("invert", sparsity=0.7)
    names = list(scores)
    flat = np.concatenate([scores[n].numpy().ravel() for n in names])
    num_kept = int(sum(m.sum() for m in plain.masks.values()))
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:num_kept]] = True
    got = np.concatenate([inverted.masks[n].numpy().ravel() for n in names])
    assert got.sum() == num_kept
    np.testing.assert_array_equal(got, keep)


def test_magnitude_inside_is_top_magnitude_with_the_criterion_counts():
    plain, _, original = prune("magnitude_inside", sparsity=0.85, method="refer")
    reference, _, _ = prune(sparsity=0.85, method="refer")
    assert kept_counts(plain.masks) == kept_counts(reference.masks)
    for name, mask in plain.masks.items():
        magnitude = original[name].abs().numpy().ravel()
        k = int(mask.sum())
        expected = np.zeros(magnitude.size, dtype=bool)
        expected[np.argsort(-magnitude, kind="stable")[:k]] = True
        np.testing.assert_array_equal(mask.numpy().ravel(), expected, err_msg=name)
    assert not all(torch.equal(plain.masks[n], reference.masks[n]) for n in plain.masks)


@pytest.mark.parametrize("control", ["shuffle", "invert", "magnitude_inside"])
def test_controls_keep_an_nm_pattern(control):
    pruner, scores, original = prune(control, pattern="2:4")
    for name, mask in pruner.masks.items():
        groups = mask.reshape(-1, 4)
        assert (groups.sum(1) == 2).all(), name
    if control == "magnitude_inside":
        name = "vit.layers.0.mlp.fc1.weight"
        groups = original[name].abs().reshape(-1, 4)
        kept = groups[pruner.masks[name].reshape(-1, 4)].reshape(-1, 2)
        pruned = groups[~pruner.masks[name].reshape(-1, 4)].reshape(-1, 2)
        assert (kept.min(1).values >= pruned.max(1).values).all()


def test_unknown_control_is_a_one_line_error():
    with pytest.raises(ValueError, match="`control` must be None or one of 'shuffle', 'invert'"):
        PrunerConfig(control="flip")
    config = PrunerConfig()
    config.control = "flip"
    with pytest.raises(ValueError, match="`control` must be None or one of"):
        controlled_masks({"w": torch.rand(4, 4)}, {}, config)


def test_control_is_saved_and_named_in_the_model_card(tmp_path):
    pruner, _, _ = prune("shuffle", sparsity=0.5)
    pruner.save_pretrained(tmp_path)
    assert PrunerConfig.from_pretrained(tmp_path).control == "shuffle"
    card = (tmp_path / "README.md").read_text()
    assert "sanity-check control" in card and "`shuffle`" in card
    plain, _, _ = prune(sparsity=0.5)
    plain.save_pretrained(tmp_path / "plain")
    assert "sanity-check control" not in (tmp_path / "plain" / "README.md").read_text()
