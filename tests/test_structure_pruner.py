"""Structured pruning end to end: budget, config, a smaller trainable model, save and reload."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from families import FAMILIES, tiny_batches, tiny_classifier
from test_structure_slicing import family_model

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.structure.budget import select_groups
from hf_afr.structure.groups import BlockGroups
from hf_afr.structure.report import count_macs, structure_report

pytestmark = pytest.mark.usefixtures("single_thread")


def two_blocks(heads=4, head_dim=8, units=64, hidden=32):
    params = {}
    return [BlockGroups(f"b{i}", heads, head_dim, units, hidden, params) for i in range(2)]


def test_each_kind_loses_the_same_fraction_of_its_weights_lowest_scores_first():
    groups = two_blocks()  # a head owns 4*8*32 = 1024 weights, a unit 64
    total = 2 * (4 * 1024 + 64 * 64)  # 16384: half in heads, half in units
    scores = {
        "heads": {"b0": torch.tensor([4.0, 3, 2, 1]), "b1": torch.tensor([8.0, 7, 6, 5])},
        "units": {"b0": torch.arange(64.0), "b1": torch.arange(64.0) + 0.5},
    }
    plan = select_groups(groups, scores, "heads+mlp", 0.25, total)
    # 4096 weights: 2048 from heads (the two lowest heads, both in b0), 2048 from units (32)
    assert plan.heads == {"b0": [0, 1], "b1": [0, 1, 2, 3]}
    assert plan.units["b0"] == list(range(16, 64)) and plan.units["b1"] == list(range(16, 64))
    mlp_only = select_groups(groups, scores, "mlp", 0.25, total)
    assert mlp_only.heads["b0"] == [0, 1, 2, 3]
    assert sum(64 - len(k) for k in mlp_only.units.values()) == 64  # 4096 / 64


def test_floors_round_to_and_an_unreachable_budget():
    groups = two_blocks()
    total = 2 * (4 * 1024 + 64 * 64)
    scores = {
        "heads": {"b0": torch.tensor([1.0, 2, 3, 4]), "b1": torch.tensor([5.0, 6, 7, 8])},
        "units": {"b0": torch.arange(64.0), "b1": torch.arange(64.0) + 100},
    }
    plan = select_groups(groups, scores, "heads", 0.35, total)  # 5734 weights: 6 heads of 1024
    assert [len(k) for k in plan.heads.values()] == [1, 1]  # 3 from each block: the floor
    plan = select_groups(groups, scores, "heads+mlp", 0.5, total, min_units=40, round_to=16)
    # units can give only 2 * 24 * 64 = 3072 of their 4096 above the floor of 40: the rest goes
    # to a fifth head; 40 kept units round half up to 48, the best-scored ones
    assert [len(k) for k in plan.heads.values()] == [1, 2]
    assert plan.units["b0"] == list(range(16, 64)) and plan.units["b1"] == list(range(16, 64))
    with pytest.raises(ValueError, match="at most 37.5%"):
        select_groups(groups, scores, "heads", 0.4, total)


def test_structure_options_are_validated():
    assert PrunerConfig(structure="heads+mlp", min_units=8, round_to=8).round_to == 8
    with pytest.raises(ValueError, match="`structure` must be one of"):
        PrunerConfig(structure="channels")
    with pytest.raises(ValueError, match="with one of afr, snip"):
        PrunerConfig(structure="mlp", method="synflow")
    with pytest.raises(ValueError, match="`pattern` applies to individual weights"):
        PrunerConfig(structure="mlp", pattern="2:4")
    with pytest.raises(ValueError, match="`min_units` must be an integer >= 1"):
        PrunerConfig(min_units=0)
    with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
        PrunerConfig(structure="mlp", rounds=0)
    with pytest.raises(ValueError, match="`rounds` \\(3\\) applies to structured pruning"):
        PrunerConfig(rounds=3)


def test_an_unreachable_budget_is_refused_before_any_scoring_batch_is_read():
    model = tiny_classifier("vit", num_attention_heads=4)

    def batches():
        raise AssertionError("a scoring batch was read")
        yield

    pruner = AFRPruner(model, PrunerConfig(method="snip", sparsity=0.9, structure="heads"))
    with pytest.raises(ValueError, match="structure='heads' can remove at most"):
        pruner.prune(batches(), show_progress=False)


def logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_prune_leaves_a_smaller_trainable_model_that_saves_and_reloads(family, tmp_path):
    model = tiny_classifier(family, **({} if family == "swin" else {"num_attention_heads": 4}))
    dense_params = sum(p.numel() for p in model.parameters())
    dense_macs = count_macs(model)
    config = PrunerConfig(method="afr", structure="heads+mlp", sparsity=0.5, num_batches=2)
    pruner = AFRPruner(model, config)
    assert pruner.prune(tiny_batches()) == {}
    assert type(pruner.model) is type(model)
    report = pruner.sparsity_report()
    assert abs(report.sparsity - 0.5) < 0.05
    assert report.params_after == sum(p.numel() for p in model.parameters()) < dense_params
    assert report.params_before == dense_params
    assert report.macs_before == dense_macs and report.macs_after == count_macs(model)
    assert report.macs_after < 0.75 * dense_macs
    assert model.config.layer_num_attention_heads == report.heads_after
    assert all(n >= 1 for n in report.heads_after + report.units_after)
    # trainable: a step changes the sliced weights
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = tiny_batches(n_batches=1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    model(**batch).loss.backward()
    optimizer.step()
    assert all(
        not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad is not None
    )
    model.eval()
    pruner.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "pruner_config.json").read_text())
    assert saved["structure"] == "heads+mlp" and saved["min_units"] == 1
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Structure" in card and "structurally pruned" in card and "MACs per image" in card
    assert "Each attention head and MLP hidden unit is scored" in card and "Each weight" not in card
    reloaded = AFRPruner.from_pretrained(tmp_path / "out")
    assert type(reloaded.model) is type(model) and reloaded.config.structure == "heads+mlp"
    x = tiny_batches(n_batches=1, seed=5)[0]["pixel_values"]
    torch.testing.assert_close(logits(reloaded.model, x), logits(model, x))
    assert str(reloaded.sparsity_report()) == str(report)


def test_individual_weights_of_what_remains_are_pruned_by_a_second_pruner(tmp_path):
    model = tiny_classifier("vit", num_attention_heads=4)
    AFRPruner(model, PrunerConfig(method="snip", structure="mlp", sparsity=0.3)).prune(
        tiny_batches()
    )
    second = AFRPruner(model, PrunerConfig(method="snip", sparsity=0.5))
    masks = second.prune(tiny_batches())
    assert masks["vit.layers.0.mlp.fc1.weight"].shape[0] == model.config.layer_intermediate_sizes[0]
    assert abs(second.sparsity_report().sparsity - 0.5) < 1e-3
    second.save_pretrained(tmp_path / "both")
    again = AFRPruner.from_pretrained(tmp_path / "both")
    assert again.masks.keys() == masks.keys()
    assert "## Structure" in (tmp_path / "both" / "README.md").read_text()
    assert structure_report(again.model.config).heads_after == [4, 4]


def test_a_structured_model_without_masks_is_saved_dense(tmp_path):
    model = tiny_classifier("vit", num_attention_heads=4)
    pruner = AFRPruner(model, PrunerConfig(method="random", structure="mlp", sparsity=0.3))
    pruner.prune()
    with pytest.raises(ValueError, match="checkpoint_format='dense'"):
        pruner.save_pretrained(tmp_path / "c", checkpoint_format="compact")
    with pytest.raises(ValueError, match="already pruned structurally"):
        pruner.prune()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_saves_and_reloads_its_widths(family, tmp_path):
    model = family_model(family)
    config = PrunerConfig(method="random", structure="heads+mlp", sparsity=0.4, seed=1)
    pruner = AFRPruner(model, config)
    pruner.prune()
    pruner.save_pretrained(tmp_path)
    reloaded = AFRPruner.from_pretrained(tmp_path).model
    assert type(reloaded) is type(model)
    x = tiny_batches(n_batches=1, seed=5)[0]["pixel_values"]
    torch.testing.assert_close(logits(reloaded, x), logits(model, x))


def test_a_shared_position_bias_table_allows_mlp_units_only():
    model = tiny_classifier("beit", use_shared_relative_position_bias=True)
    with pytest.raises(ValueError, match="use structure='mlp'"):
        AFRPruner(model, PrunerConfig(method="random", structure="heads", sparsity=0.2)).prune()
    AFRPruner(model, PrunerConfig(method="random", structure="mlp", sparsity=0.3)).prune()
    assert model.config.layer_intermediate_sizes != [64, 64]


def test_per_layer_ranking_takes_the_same_share_from_every_block():
    groups = two_blocks()  # head: 1024 weights, unit: 64
    total = 2 * (4 * 1024 + 64 * 64)
    scores = {  # every head of b0 scores below every head of b1
        "heads": {"b0": torch.tensor([4.0, 3, 2, 1]), "b1": torch.tensor([8.0, 7, 6, 5])},
        "units": {"b0": torch.arange(64.0), "b1": torch.arange(64.0) - 100},
    }
    plan = select_groups(groups, scores, "heads+mlp", 0.25, total, ranking="per_layer")
    # 2048 weights from heads: one head from each block (per_kind would take two from b0);
    # 2048 from units: 16 from each block, its lowest
    assert plan.heads == {"b0": [0, 1, 2], "b1": [0, 1, 2]}
    assert plan.units == {"b0": list(range(16, 64)), "b1": list(range(16, 64))}
    # 0.1625 * 16384 = 2662 weights from heads, 1331 per block: one head each (to the nearest
    # head), and the remaining 614 (over half a head) from the lowest head left, in b0
    plan = select_groups(groups, scores, "heads", 0.1625, total, ranking="per_layer")
    assert plan.heads == {"b0": [0, 1], "b1": [0, 1, 2]}
    # the floors hold: at most three heads from a block
    plan = select_groups(groups, scores, "heads", 0.375, total, ranking="per_layer")
    assert plan.heads == {"b0": [0], "b1": [0]}
    # four blocks at 70%: 2.8 heads per block round down to 2, and the 3.2 heads left go by
    # score (3 of them, to the nearest head): as many as per_kind removes, not 3 per block
    four = [BlockGroups(f"b{i}", 4, 8, 64, 32, {}) for i in range(4)]
    rising = torch.arange(16.0).view(4, 4)  # block i's heads score 4i .. 4i+3
    scores = {
        "heads": {f"b{i}": rising[i] for i in range(4)},
        "units": {f"b{i}": torch.arange(64.0) for i in range(4)},
    }
    total = 4 * (4 * 1024 + 64 * 64)
    for sparsity in (0.3, 0.5, 0.7):
        per_kind = select_groups(four, scores, "heads+mlp", sparsity, total)
        per_layer = select_groups(four, scores, "heads+mlp", sparsity, total, ranking="per_layer")
        for kind in ("heads", "units"):
            kept = [sum(map(len, plan.kept(kind).values())) for plan in (per_kind, per_layer)]
            assert kept[0] == kept[1], (sparsity, kind)
    assert [len(k) for k in per_layer.heads.values()] == [1, 1, 1, 2]  # the extra from b0-b2


def test_pooled_ranking_removes_the_lowest_scores_of_either_kind():
    groups = two_blocks()  # head: 1024 weights, unit: 64
    total = 2 * (4 * 1024 + 64 * 64)
    scores = {  # heads of b0 score lowest of all, then the units of b1
        "heads": {"b0": torch.tensor([0.1, 0.2, 9, 9]), "b1": torch.full((4,), 9.0)},
        "units": {"b0": torch.full((64,), 5.0), "b1": torch.arange(64.0) / 100 + 1},
    }
    plan = select_groups(groups, scores, "heads+mlp", 0.25, total, ranking="pooled")
    # 4096 weights: the two low heads (2048), then the 32 lowest units of b1 (2048)
    assert plan.heads == {"b0": [2, 3], "b1": [0, 1, 2, 3]}
    assert plan.units["b0"] == list(range(64)) and plan.units["b1"] == list(range(32, 64))
    with pytest.raises(ValueError, match="`ranking` must be one of"):
        select_groups(groups, scores, "mlp", 0.1, total, ranking="global")
    with pytest.raises(ValueError, match="`group_ranking` must be one of"):
        PrunerConfig(group_ranking="global")


@pytest.mark.parametrize("method", ["afr", "snip"])
def test_rounds_rescore_what_the_previous_rounds_left(method):
    """Two rounds equal two one-shot prunings of the same batches, the second of the smaller
    model to the rest of the budget; the plan indexes the dense model."""
    from hf_afr.structure.groups import block_groups, prunable_group_weights
    from hf_afr.structure.prune import prune_structure

    dense = tiny_classifier("vit", num_attention_heads=4)
    batches = tiny_batches(n_batches=2)
    kinds = ("heads", "units")
    total = prunable_group_weights(block_groups(dense), kinds)
    config = PrunerConfig(method=method, structure="heads+mlp", sparsity=0.6, rounds=2)

    model = copy.deepcopy(dense)
    plan = prune_structure(model, iter(batches), config, total)  # read once, scored twice

    by_hand = copy.deepcopy(dense)
    once = dataclasses.replace(config, rounds=1, sparsity=1 - 0.4**0.5)
    first = prune_structure(by_hand, batches, once, total)
    removed = total - prunable_group_weights(block_groups(by_hand), kinds)
    rest = dataclasses.replace(once, sparsity=(0.6 * total - removed) / total)
    second = prune_structure(by_hand, batches, rest, total)
    assert by_hand.config.layer_intermediate_sizes == model.config.layer_intermediate_sizes
    for name, p in by_hand.named_parameters():
        torch.testing.assert_close(model.get_parameter(name), p, rtol=0, atol=0)
    for kind in kinds:
        for block, index in second.kept(kind).items():
            assert plan.kept(kind)[block] == [first.kept(kind)[block][i] for i in index]
    # the plan's indices are the dense model's: each block's fc1 keeps the dense rows
    for block, units in plan.units.items():
        fc1 = next(n for n, m in dense.get_submodule(block).named_modules() if n.endswith("fc1"))
        dense_rows = dense.get_submodule(f"{block}.{fc1}").weight[units]
        torch.testing.assert_close(model.get_submodule(f"{block}.{fc1}").weight, dense_rows)
    assert abs(1 - prunable_group_weights(block_groups(model), kinds) / total - 0.6) < 0.05


def test_the_card_describes_every_group_criterion():
    from hf_afr.checkpoint.card import GROUP_DESCRIPTIONS
    from hf_afr.config import GROUP_METHODS

    assert set(GROUP_DESCRIPTIONS) == set(GROUP_METHODS)
