"""Group scores: how much each attention head and MLP unit matters, from the usual passes.

SNIP's own derivation with one mask variable per group: a multiplicative gate `c_g` on the
group's output (a unit's activation, a head's context vector), scored `|d objective / d c_g|`
at `c = 1`. No gate needs inserting: the gate multiplies the inputs of the output-side Linear
(`fc2` for a unit, the attention output projection for a head), so

    d objective / d c_g = sum_i sum_{j in g} d objective / dW[i, j] * W[i, j],

a signed sum of `g * w` over the group's output-side columns. The weight gradients come from
`hf_afr.criteria.gradients.accumulate_gradients`, the pass SNIP, ReFer and AFR already run
(here only for the output-side weights): SNIP's objective is the loss, ReFer's the feature
objective R, and AFR takes both from one shared forward pass per batch.

Ranking scores compare groups *within a kind* (heads with heads, units with units; see
`budget.py`). Each is a score per weight the group owns (`|d/dc_g| / cost_g`), so that groups
of different sizes (Swin's stages) compete fairly; AFR is `z(ReFer) + z(SNIP)` with z-scores
taken over the groups that compete (those of one kind; of one kind in one block with
`group_ranking="per_layer"`; all of them with `"pooled"`). Also: `magnitude` (the group's weight
L2 norm per sqrt(weight), Torch-Pruning's group-norm baseline), `random` (seeded), and `fisher`
(sum over batches of `(dL_b/dc_g)^2`, the batch-level empirical Fisher of the gate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..config import GROUP_METHODS, PrunerConfig
from ..criteria.gradients import accumulate_gradients
from .groups import KINDS, BlockGroups, block_groups

GroupScores = dict[str, dict[str, torch.Tensor]]
"""`{kind: {block name: float32 tensor with one score per group}}`, kind in `KINDS`."""

_OBJECTIVES = {"snip": ("loss",), "refer": ("refer",), "afr": ("loss", "refer")}


def gate_gradients(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    config: PrunerConfig,
    objectives: tuple[str, ...],
    groups: list[BlockGroups] | None = None,
) -> list[GroupScores]:
    """Signed `d objective / d c_g` of every head and unit gate, one `GroupScores` per objective.

    Args:
        model (`nn.Module`): the model to score (unchanged).
        batches: the scoring batches (all are used).
        config (`PrunerConfig`): micro-batching, features and checkpointing options.
        objectives (`tuple[str, ...]`): `"loss"` and/or `"refer"`.
        groups (`list[BlockGroups]`, *optional*): the model's groups (computed if None).
    """
    groups = groups if groups is not None else block_groups(model)
    named = dict(model.named_parameters())
    params = {g.params[r]: named[g.params[r]] for g in groups for r in ("output", "fc2")}
    sums = accumulate_gradients(model, batches, params, config, objectives=objectives)
    result = []
    for grads in sums:
        scores: GroupScores = {kind: {} for kind in KINDS}
        for g in groups:
            out = grads[g.params["output"]] * params[g.params["output"]].detach().float()
            scores["heads"][g.name] = out.sum(0).view(g.heads, g.head_dim).sum(1)
            fc2 = grads[g.params["fc2"]] * params[g.params["fc2"]].detach().float()
            scores["units"][g.name] = fc2.sum(0)
        result.append(scores)
    return result


@torch.no_grad()
def group_norms(model: nn.Module, groups: list[BlockGroups] | None = None) -> GroupScores:
    """The L2 norm of the weights each head and unit owns (q/k/v rows + output columns;
    fc1 row + fc2 column)."""
    groups = groups if groups is not None else block_groups(model)
    named = dict(model.named_parameters())
    scores: GroupScores = {kind: {} for kind in KINDS}
    for g in groups:
        w = {role: named[name].detach().float().square() for role, name in g.params.items()}
        rows = sum(w[r].sum(1) for r in ("query", "key", "value")) + w["output"].sum(0)
        scores["heads"][g.name] = rows.view(g.heads, g.head_dim).sum(1).sqrt()
        scores["units"][g.name] = (w["fc1"].sum(1) + w["fc2"].sum(0)).sqrt()
    return scores


def _map(scores: GroupScores, fn) -> GroupScores:
    return {
        kind: {name: fn(kind, name, s) for name, s in per.items()} for kind, per in scores.items()
    }


def _per_weight(scores: GroupScores, groups: list[BlockGroups], power: float = 1.0) -> GroupScores:
    """`|s| / cost**power` (a score per weight the group owns)."""
    cost = {g.name: g for g in groups}
    return _map(scores, lambda kind, name, s: s.abs() / float(cost[name].cost(kind)) ** power)


def _moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of `values` in float64 (a zero std becomes 1)."""
    mean, std = values.double().mean(), values.double().std(unbiased=False)
    return mean, std if std > 0 else torch.ones_like(std)


def zscore_groups(scores: GroupScores, ranking: str = "per_kind") -> GroupScores:
    """Z-scores over the groups that compete in `ranking` (`hf_afr.structure.budget`): all
    groups of a kind (`"per_kind"`), a kind's groups in one block (`"per_layer"`), or all
    groups together (`"pooled"`)."""
    every = torch.cat([s for per in scores.values() for s in per.values()])
    pooled = _moments(every) if ranking == "pooled" else None
    result: GroupScores = {}
    for kind, per in scores.items():
        shared = pooled
        if ranking == "per_kind" and per:
            shared = _moments(torch.cat(list(per.values())))  # per_layer: each block's own
        result[kind] = {}
        for name, s in per.items():
            mean, std = shared or _moments(s)
            result[kind][name] = ((s.double() - mean) / std).float()
    return result


def group_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    config: PrunerConfig,
    groups: list[BlockGroups] | None = None,
) -> GroupScores:
    """Ranking scores of every head and MLP unit (higher = more important) with `config.method`.

    Args:
        model (`nn.Module`): the model to score (unchanged).
        batches: the scoring batches (needed by all methods but `magnitude` and `random`).
        config (`PrunerConfig`): `method` (one of `GROUP_METHODS`), `seed` and scoring options.
        groups (`list[BlockGroups]`, *optional*): the model's groups (computed if None).

    Returns:
        `GroupScores`: comparable within a kind (see the module docstring).
    """
    groups = groups if groups is not None else block_groups(model)
    method = config.method
    if method not in GROUP_METHODS:
        raise ValueError(
            f"Structured pruning scores groups with one of {', '.join(GROUP_METHODS)}; "
            f"got method={method!r}."
        )
    if method == "magnitude":
        return _per_weight(group_norms(model, groups), groups, power=0.5)
    if method == "random":
        generator = torch.Generator().manual_seed(config.seed)
        return {
            kind: {g.name: torch.rand(g.count(kind), generator=generator) for g in groups}
            for kind in KINDS
        }
    if batches is None:
        raise ValueError(f"Method {method!r} needs scoring batches; pass `batches`.")
    if method == "fisher":
        total: GroupScores | None = None
        for batch in batches:
            (gates,) = gate_gradients(model, [batch], config, ("loss",), groups)
            squares = _map(gates, lambda kind, name, s: s.square())
            total = (
                squares
                if total is None
                else _map(total, lambda k, n, s, new=squares: s + new[k][n])
            )
        if total is None:
            raise ValueError("Method 'fisher' got no scoring batch.")
        return _per_weight(total, groups)
    per_objective = gate_gradients(model, batches, config, _OBJECTIVES[method], groups)
    densities = [_per_weight(gates, groups) for gates in per_objective]
    if method != "afr":
        return densities[0]
    loss, refer = (zscore_groups(d, config.group_ranking) for d in densities)
    return _map(refer, lambda kind, name, s: s + loss[kind][name])
