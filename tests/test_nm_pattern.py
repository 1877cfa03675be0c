"""N:M semi-structured masks: `PrunerConfig(pattern="2:4")`, selection, enforcement, checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_batches, tiny_vit
from transformers import AutoModelForImageClassification, HfArgumentParser

from hf_afr import AFRPruner, PrunerConfig, enforce_masks
from hf_afr.masks import select_masks, select_nm_masks

pytestmark = pytest.mark.usefixtures("single_thread")


def group_counts(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """Nonzeros (or kept entries) per run of m consecutive entries along the last dimension."""
    return (tensor.reshape(-1, m) != 0).sum(dim=1)


def python_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A second implementation: per group, prune the m - n lowest (earlier first on ties)."""
    flat = scores.reshape(-1).tolist()
    keep = [True] * len(flat)
    for start in range(0, len(flat), m):
        group = list(range(start, start + m))
        for i in sorted(group, key=lambda i: (flat[i], i))[: m - n]:
            keep[i] = False
    return torch.tensor(keep).view(scores.shape)


def test_pattern_fixes_the_sparsity_and_conflicts_are_errors():
    assert PrunerConfig().sparsity == 0.9 and PrunerConfig().pattern is None
    config = PrunerConfig(pattern="2:4")
    assert config.sparsity == 0.5 and config.pattern_nm == (2, 4)
    assert PrunerConfig(pattern=" 1 : 4 ", sparsity=0.75).pattern == "1:4"
    with pytest.raises(ValueError, match="fixes the sparsity at 1 - 2/4"):
        PrunerConfig(pattern="2:4", sparsity=0.9)
    for bad in ("2:2", "4:2", "0:4", "2-4", "a:b", "2:4:8"):
        with pytest.raises(ValueError, match="'N:M' with integers 0 < N < M"):
            PrunerConfig(pattern=bad)


def test_pattern_parses_from_the_command_line_and_round_trips(tmp_path):
    (config,) = HfArgumentParser(PrunerConfig).parse_args_into_dataclasses(["--pattern", "2:4"])
    assert config.pattern == "2:4" and config.sparsity == 0.5
    config.save_pretrained(tmp_path)
    assert PrunerConfig.from_pretrained(tmp_path) == config


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_selection_keeps_exactly_the_best_n_of_every_m(n, m):
    generator = torch.Generator().manual_seed(n * 10 + m)
    scores = {
        "a": torch.randn(6, 16, generator=generator),
        # Many ties: the earlier position is pruned first, as in unstructured selection.
        "b": torch.randint(0, 3, (4, 8), generator=generator).float(),
    }
    masks = select_masks(scores, 1 - n / m, pattern=f"{n}:{m}")
    for name, s in scores.items():
        assert (group_counts(masks[name], m) == n).all()
        assert torch.equal(masks[name], python_nm(s, n, m))


def test_selection_refuses_an_input_dimension_not_divisible_by_m():
    with pytest.raises(ValueError, match="must be a multiple of 4"):
        select_nm_masks({"w": torch.randn(3, 6)}, 2, 4)
    with pytest.raises(ValueError, match="prunes 1 - 2/4"):
        select_masks({"w": torch.randn(3, 8)}, 0.9, pattern="2:4")


@pytest.mark.parametrize("method", ["magnitude", "random", "snip", "refer", "afr"])
def test_every_criterion_yields_the_exact_pattern(method):
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method=method, pattern="2:4", num_batches=1))
    masks = pruner.prune(tiny_batches(1), show_progress=False)
    for name, param in pruner.params.items():
        assert (group_counts(masks[name], 4) == 2).all(), name
        assert (group_counts(param.detach(), 4) <= 2).all(), name
    assert pruner.sparsity_report().sparsity == 0.5


def test_pattern_survives_fine_tuning_with_enforcement():
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method="magnitude", pattern="2:4"))
    masks = pruner.prune()
    model = pruner.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    enforcer = enforce_masks(model, masks, optimizer)
    for batch in tiny_batches(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    enforcer.verify(optimizer)
    for name, param in pruner.params.items():
        assert (group_counts(param.detach(), 4) <= 2).all(), name
        assert param.detach()[masks[name]].ne(0).float().mean() > 0.99  # kept weights trained


@pytest.mark.parametrize("checkpoint_format", ["dense", "compact"])
def test_pattern_survives_a_save_load_round_trip(tmp_path, checkpoint_format):
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method="magnitude", pattern="2:4"))
    masks = pruner.prune()
    pruner.save_pretrained(tmp_path, checkpoint_format=checkpoint_format, model_card=False)
    loaded = AFRPruner.from_pretrained(tmp_path)
    assert loaded.config.pattern == "2:4" and loaded.config.sparsity == 0.5
    for name in masks:
        assert torch.equal(loaded.masks[name], masks[name])
        assert (group_counts(loaded.params[name].detach(), 4) <= 2).all()
    plain = AutoModelForImageClassification.from_pretrained(tmp_path)
    weights = dict(plain.named_parameters())
    for name in masks:
        assert torch.equal(weights[name].detach(), pruner.params[name].detach())
