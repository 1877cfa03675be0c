"""Structured pruning of a model in place: score the groups, choose them, slice them away."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..config import PrunerConfig
from .budget import StructurePlan, select_groups
from .groups import block_groups, model_layout
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

    Args:
        model (`nn.Module`): a transformers classifier of a supported family (changed in place).
        batches: the scoring batches (already limited to `config.num_batches`).
        config (`PrunerConfig`): `structure`, `method`, `sparsity`, `min_units`, `round_to`.
        total_weights (`int`): the prunable weights `config.sparsity` is a fraction of.

    Returns:
        `StructurePlan`: the kept heads and units of every block (indices in the dense model).
    """
    _check_shared_tables(model, config.structure)
    groups = block_groups(model)
    scores = group_scores(model, batches, config, groups)
    plan = select_groups(
        groups,
        scores,
        config.structure,
        config.sparsity,
        total_weights,
        min_units=config.min_units,
        round_to=config.round_to,
    )
    apply_plan(model, plan)
    return plan
