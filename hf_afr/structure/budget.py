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


def select_groups(
    groups: list[BlockGroups],
    scores: GroupScores,
    structure: str,
    sparsity: float,
    total_weights: int,
    min_units: int = 1,
    round_to: int = 1,
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

    Raises:
        `ValueError`: a budget the structure cannot reach under the floors.
    """
    kinds = STRUCTURE_KINDS[structure]
    target = sparsity * total_weights
    most = sum(_removable(groups, kind, min_units) for kind in kinds)
    if target > most:
        raise ValueError(
            f"structure={structure!r} can remove at most {most / total_weights:.1%} of the "
            f"prunable weights with its floors (one head and min_units={min_units} units per "
            f"block), but sparsity={sparsity} asks for more; lower `sparsity`"
            + (" or use structure='heads+mlp'." if structure != "heads+mlp" else ".")
        )
    plan = StructurePlan()
    by_name = {g.name: g for g in groups}
    for kind, share in _kind_targets(groups, kinds, target, min_units).items():
        removed = _remove_lowest(groups, scores[kind], kind, share, min_units)
        for g in groups:
            gone = removed.get(g.name, set())
            plan.kept(kind)[g.name] = [i for i in range(g.count(kind)) if i not in gone]
    for kind in {"heads", "units"} - set(kinds):
        for g in groups:
            plan.kept(kind)[g.name] = list(range(g.count(kind)))
    if round_to > 1 and "units" in kinds:
        for name, kept in plan.units.items():
            plan.units[name] = _rounded(
                kept, scores["units"][name], by_name[name].units, round_to, min_units
            )
    return plan


def _remove_lowest(
    groups: list[BlockGroups],
    scores: dict[str, torch.Tensor],
    kind: str,
    share: float,
    min_units: int,
) -> dict[str, set[int]]:
    """The lowest-scored groups of `kind`, removed until `share` weights are gone (nearest)."""
    order = sorted(
        (
            (float(s), gi, i)
            for gi, g in enumerate(groups)
            for i, s in enumerate(scores[g.name].tolist())
        ),
        key=lambda t: (t[0], t[1], t[2]),
    )
    removed: dict[str, set[int]] = {}
    left = {g.name: g.count(kind) for g in groups}
    done = 0.0
    for _, gi, i in order:
        g = groups[gi]
        cost = g.cost(kind)
        if done + cost / 2 > share:
            continue  # a smaller group further on may still fit
        if left[g.name] <= _floor(g, kind, min_units):
            continue
        removed.setdefault(g.name, set()).add(i)
        left[g.name] -= 1
        done += cost
    return removed


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
