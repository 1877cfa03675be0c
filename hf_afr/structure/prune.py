"""Structured pruning of a model in place: score the groups, choose them, slice them away."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..config import PrunerConfig
from ..criteria.head_fit import scoring_head
from .budget import StructurePlan, check_budget, select_groups
from .groups import block_groups, model_layout, prunable_group_weights
from .report import HEADS_KEY, UNITS_KEY
from .scores import group_scores
from .slicing import keep_heads, keep_units, layer_widths, transformer_layers


def _check_shared_tables(model: nn.Module, structure: str) -> None:
    if "heads" in structure and getattr(model.config, "use_shared_relative_position_bias", False):
        raise ValueError(
            "This model shares one relative position bias table across its blocks "
            "(use_shared_relative_position_bias=True), which cannot lose different heads per "
            "block; use structure='mlp'."
        )


def apply_plan(model: nn.Module, plan: StructurePlan) -> None:
    """Slice every block to the heads and units of `plan` and record the widths on the config
    (`config.layer_num_attention_heads`, `config.layer_intermediate_sizes`)."""
    layout = model_layout(model)
    for name, block in transformer_layers(model, layout).items():
        keep_heads(block, layout, plan.heads[name])
        keep_units(block, layout, plan.units[name])
    heads, units = layer_widths(model, layout)
    setattr(model.config, HEADS_KEY, heads)
    setattr(model.config, UNITS_KEY, units)


def prune_structure(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    config: PrunerConfig,
    total_weights: int,
) -> StructurePlan:
    """Score every head and MLP unit, keep the best under the budget, and slice the rest away.

    With `config.rounds > 1` this is done in rounds (SNIP-it, Verdenius et al., 2020; FORCE,
    de Jorge et al., ICLR 2021): the density falls geometrically, `(1 - sparsity) ** (r / R)`
    after round r of R, and each round scores the groups left in the model the previous round
    made smaller, on the same batches, so a group's score reflects the groups that stay.

    Args:
        model (`nn.Module`): a transformers classifier of a supported family (changed in place).
        batches: the scoring batches (already limited to `config.num_batches`).
        config (`PrunerConfig`): `structure`, `method`, `sparsity`, `rounds`, `min_units`,
            `round_to`, `group_ranking`.
        total_weights (`int`): the prunable weights `config.sparsity` is a fraction of.

    Returns:
        `StructurePlan`: the kept heads and units of every block (indices in the dense model).
    """
    _check_shared_tables(model, config.structure)
    groups = block_groups(model)
    check_budget(groups, config.structure, config.sparsity, total_weights, config.min_units)
    if config.rounds > 1 and batches is not None:
        batches = list(batches)  # read once, scored every round
    kinds = ("heads", "units")
    dense = prunable_group_weights(groups, kinds)
    kept = StructurePlan(
        heads={g.name: list(range(g.heads)) for g in groups},
        units={g.name: list(range(g.units)) for g in groups},
    )
    for r in range(1, config.rounds + 1):
        removed = dense - prunable_group_weights(groups, kinds)
        goal = 1.0 - (1.0 - config.sparsity) ** (r / config.rounds)
        with scoring_head(model, batches, config) as scoring_batches:
            scores = group_scores(model, scoring_batches, config, groups)
        plan = select_groups(
            groups,
            scores,
            config.structure,
            max(goal * total_weights - removed, 0.0) / total_weights,
            total_weights,
            min_units=config.min_units,
            round_to=config.round_to if r == config.rounds else 1,
            ranking=config.group_ranking,
        )
        apply_plan(model, plan)
        for kind in kinds:
            for name, index in plan.kept(kind).items():
                kept.kept(kind)[name] = [kept.kept(kind)[name][i] for i in index]
        groups = block_groups(model)  # the smaller model's, for the next round
    return kept


@torch.no_grad()
def remove_dead_units(
    model: nn.Module, masks: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Remove, in place, every MLP hidden unit whose `fc2` column the masks prune entirely, and
    return the masks of the smaller model (the widths are recorded on its config).

    Exact for masked fine-tuning, not only for inference: such a unit adds nothing to the
    output, so its `fc1` row and bias get zero gradients, and its `fc2` column's gradient is
    zeroed by the masks; clipped norms, AdamW moments and every other update are the same (up
    to the order of float sums), without dropout. It saves the compute of units that cannot
    matter: at 95-98% sparsity most of them. A block whose every unit is dead keeps one (masked).

    Args:
        model (`nn.Module`): a model of a supported family whose weights follow `masks`.
        masks (`dict[str, Tensor]`): the masks (True = kept) by parameter name.
    """
    layout = model_layout(model)
    masks = dict(masks)
    for name, block in transformer_layers(model, layout).items():
        prefix = f"{name}." if name else ""
        key1, key2 = f"{prefix}{layout.fc1}.weight", f"{prefix}{layout.fc2}.weight"
        if key2 not in masks:
            continue
        keep = masks[key2].any(dim=0)
        if bool(keep.all()):
            continue
        index = keep.nonzero().squeeze(1).tolist() or [0]
        keep_units(block, layout, index)
        if key1 in masks:
            masks[key1] = masks[key1][index]
        masks[key2] = masks[key2][:, index]
    heads, units = layer_widths(model, layout)
    setattr(model.config, HEADS_KEY, heads)
    setattr(model.config, UNITS_KEY, units)
    return masks
