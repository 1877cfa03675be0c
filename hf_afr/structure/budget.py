"""Which heads and MLP units to remove for a weight budget.

`sparsity` keeps its meaning: the fraction of the prunable encoder Linear weights removed
(weights per token = multiply-adds per token for these layers). Heads and units are ranked
*within their kind* only (heads with heads, units with units, across all blocks), and every
kind in the structure loses the same fraction of the weights its groups own, as Isomorphic
Pruning (Fang et al., ECCV 2024) does for groups of the same shape: a head owns `4 * head_dim *
hidden` weights and a unit `2 * hidden` (128x fewer in ViT-B), and the scores of the two kinds
come from different distributions, so one global ranking would be decided by the scale of the
scores rather than by their meaning. docs/structured.md gives the reasoning and measurements.

Floors: every block keeps at least one head and `min_units` units. When a kind cannot give its
share under the floors, the rest is taken from the other kind. `round_to` rounds each block's
kept units to a multiple (to the nearest, at least `round_to`), keeping the best-scored units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import GROUP_RANKINGS
from .groups import BlockGroups, prunable_group_weights
from .scores import GroupScores

STRUCTURE_KINDS = {"mlp": ("units",), "heads": ("heads",), "heads+mlp": ("heads", "units")}


@dataclass
class StructurePlan:
    """The heads and units each block keeps (sorted indices), by block name."""

    heads: dict[str, list[int]] = field(default_factory=dict)
    units: dict[str, list[int]] = field(default_factory=dict)

    def kept(self, kind: str) -> dict[str, list[int]]:
        return self.heads if kind == "heads" else self.units


def _floor(group: BlockGroups, kind: str, min_units: int) -> int:
    return 1 if kind == "heads" else min(max(1, min_units), group.units)


def _removable(groups: list[BlockGroups], kind: str, min_units: int) -> int:
    return sum((g.count(kind) - _floor(g, kind, min_units)) * g.cost(kind) for g in groups)


def _kind_targets(
    groups: list[BlockGroups], kinds: tuple[str, ...], target: float, min_units: int
) -> dict[str, float]:
    """Each kind's share of `target` (proportional to its weights), capped by its floors."""
    owned = {kind: prunable_group_weights(groups, (kind,)) for kind in kinds}
    most = {kind: _removable(groups, kind, min_units) for kind in kinds}
    ratio = target / sum(owned.values())
    shares = {kind: min(ratio * owned[kind], most[kind]) for kind in kinds}
    excess = target - sum(shares.values())
    for kind in kinds:  # what a capped kind cannot give comes from the other
        extra = min(excess, most[kind] - shares[kind])
        shares[kind] += extra
        excess -= extra
    return shares


def check_budget(
    groups: list[BlockGroups],
    structure: str,
    sparsity: float,
    total_weights: int,
    min_units: int = 1,
) -> None:
    """Raise a `ValueError` if the floors leave less than `sparsity * total_weights` weights that
    `structure` can remove (known before any scoring)."""
    most = sum(_removable(groups, kind, min_units) for kind in STRUCTURE_KINDS[structure])
    if sparsity * total_weights > most:
        raise ValueError(
            f"structure={structure!r} can remove at most {most / total_weights:.1%} of the "
            f"prunable weights with its floors (one head and min_units={min_units} units per "
            f"block), but sparsity={sparsity} asks for more; lower `sparsity`"
            + (" or use structure='heads+mlp'." if structure != "heads+mlp" else ".")
        )


def select_groups(
    groups: list[BlockGroups],
    scores: GroupScores,
    structure: str,
    sparsity: float,
    total_weights: int,
    min_units: int = 1,
    round_to: int = 1,
    ranking: str = "per_kind",
) -> StructurePlan:
    """The heads and units to keep so that about `sparsity * total_weights` weights go.

    Args:
        groups (`list[BlockGroups]`): the model's blocks (`hf_afr.structure.groups.block_groups`).
        scores (`GroupScores`): ranking scores, higher = more important.
        structure (`str`): `"mlp"`, `"heads"` or `"heads+mlp"`.
        sparsity (`float`): fraction of `total_weights` to remove.
        total_weights (`int`): the prunable weights the fraction refers to.
        min_units (`int`, defaults to 1): MLP units every block keeps at least.
        round_to (`int`, defaults to 1): kept units per block rounded to a multiple of this.
        ranking (`str`, defaults to `"per_kind"`): `"per_kind"` (each kind ranked on its own,
            losing the same fraction of its weights), `"per_layer"` (as `"per_kind"`, and every
            block loses that fraction too, rounded down to whole groups; the remainder goes to
            the lowest-scored groups left) or `"pooled"` (one ranking of all groups by their
            per-weight scores, the lowest removed until the budget is reached).

    Raises:
        `ValueError`: a budget the structure cannot reach under the floors.
    """
    kinds = STRUCTURE_KINDS[structure]
    target = sparsity * total_weights
    check_budget(groups, structure, sparsity, total_weights, min_units)
    if ranking not in GROUP_RANKINGS:
        raise ValueError(f"`ranking` must be one of {', '.join(GROUP_RANKINGS)}, got {ranking!r}.")
    if ranking == "pooled":
        removed = _remove_lowest(groups, scores, kinds, target, min_units)
    else:
        shares = _kind_targets(groups, kinds, target, min_units)
        remove = _remove_per_layer if ranking == "per_layer" else _remove_lowest
        removed = set().union(
            *(remove(groups, scores, (k,), s, min_units) for k, s in shares.items())
        )
    plan = StructurePlan()
    by_name = {g.name: g for g in groups}
    for kind in ("heads", "units"):
        for g in groups:
            kept = [i for i in range(g.count(kind)) if (kind, g.name, i) not in removed]
            plan.kept(kind)[g.name] = kept
    if round_to > 1 and "units" in kinds:
        for name, kept in plan.units.items():
            plan.units[name] = _rounded(
                kept, scores["units"][name], by_name[name].units, round_to, min_units
            )
    return plan


def _remove_lowest(
    groups: list[BlockGroups],
    scores: GroupScores,
    kinds: tuple[str, ...],
    share: float,
    min_units: int,
    already: frozenset[tuple[str, str, int]] = frozenset(),
) -> set[tuple[str, str, int]]:
    """`(kind, block, index)` of the lowest-scored groups of `kinds`, removed until `share`
    weights are gone (to the nearest group), besides the groups `already` removed."""
    order = sorted(
        (float(s), kind, gi, i)
        for kind in kinds
        for gi, g in enumerate(groups)
        for i, s in enumerate(scores[kind][g.name].tolist())
        if (kind, g.name, i) not in already
    )
    removed: set[tuple[str, str, int]] = set()
    left = {(kind, g.name): g.count(kind) for kind in kinds for g in groups}
    for kind, name, _ in already:
        if (kind, name) in left:
            left[(kind, name)] -= 1
    done = 0.0
    for _, kind, gi, i in order:
        g = groups[gi]
        cost = g.cost(kind)
        if done + cost / 2 > share:
            continue  # a smaller group further on may still fit
        if left[(kind, g.name)] <= _floor(g, kind, min_units):
            continue
        removed.add((kind, g.name, i))
        left[(kind, g.name)] -= 1
        done += cost
    return removed


def _remove_per_layer(
    groups: list[BlockGroups],
    scores: GroupScores,
    kinds: tuple[str, ...],
    share: float,
    min_units: int,
) -> set[tuple[str, str, int]]:
    """As `_remove_lowest` for one kind, but every block first gives the same fraction of the
    weights its groups of that kind own, rounded down to whole groups (its own lowest-scored
    ones); the rest of `share` is then taken from the lowest-scored groups of any block, so the
    total is the one `_remove_lowest` reaches."""
    (kind,) = kinds
    fraction = share / prunable_group_weights(groups, kinds)
    removed: set[tuple[str, str, int]] = set()
    done = 0
    for g in groups:
        count = min(
            math.floor(fraction * g.count(kind) + 1e-9), g.count(kind) - _floor(g, kind, min_units)
        )
        order = torch.argsort(scores[kind][g.name], stable=True)[: max(count, 0)]
        removed |= {(kind, g.name, int(i)) for i in order}
        done += max(count, 0) * g.cost(kind)
    return removed | _remove_lowest(
        groups, scores, kinds, share - done, min_units, already=frozenset(removed)
    )


def _rounded(
    kept: list[int], scores: torch.Tensor, total: int, multiple: int, min_units: int
) -> list[int]:
    """The best-scored units, `len(kept)` rounded half up to a multiple of `multiple` (at least
    `multiple` and `min_units`, at most `total`)."""
    if total <= multiple:
        return kept
    size = max(multiple, math.floor(len(kept) / multiple + 0.5) * multiple)
    size = min(total, max(size, math.ceil(min_units / multiple) * multiple))
    best = torch.argsort(scores, descending=True, stable=True)[:size]
    return sorted(best.tolist())
