"""The prunable groups of a model: every attention head and every MLP hidden unit of each block.

A head owns `head_dim` rows of the query, key and value projections and `head_dim` input
columns of the attention output projection; an MLP unit owns one row of `fc1` and one column
of `fc2` (biases and per-head tables go with them, but are not counted as weights). The
family's `BlockLayout` (`hf_afr.architectures`) says where those modules are.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..architectures import get_architecture
from .slicing import BlockLayout, get_submodule, head_dim, num_heads, num_units, transformer_layers

KINDS = ("heads", "units")


@dataclass(frozen=True)
class BlockGroups:
    """The heads and MLP units of one transformer block.

    Args:
        name (`str`): the block's module name.
        heads (`int`): number of attention heads.
        head_dim (`int`): width of one head.
        units (`int`): number of MLP hidden units.
        hidden (`int`): the block's hidden size (input width of the projections and fc1).
        params (`dict[str, str]`): parameter names of the block's Linear weights by role
            (`query`, `key`, `value`, `output`, `fc1`, `fc2`).
    """

    name: str
    heads: int
    head_dim: int
    units: int
    hidden: int
    params: dict[str, str]

    @property
    def head_cost(self) -> int:
        """Weights one head owns: its q/k/v rows and its output columns."""
        return 4 * self.head_dim * self.hidden

    @property
    def unit_cost(self) -> int:
        """Weights one MLP unit owns: its fc1 row and its fc2 column."""
        return 2 * self.hidden

    def count(self, kind: str) -> int:
        return self.heads if kind == "heads" else self.units

    def cost(self, kind: str) -> int:
        return self.head_cost if kind == "heads" else self.unit_cost


ROLES = ("query", "key", "value", "output", "fc1", "fc2")


def model_layout(model: nn.Module) -> BlockLayout:
    """The block layout of the model's family (`hf_afr.architectures`)."""
    return get_architecture(model).layout


def block_groups(model: nn.Module) -> list[BlockGroups]:
    """The `BlockGroups` of every transformer block, in `transformer_layers` order."""
    layout = model_layout(model)
    groups = []
    for name, block in transformer_layers(model, layout).items():
        prefix = f"{name}." if name else ""
        params = {role: f"{prefix}{getattr(layout, role)}.weight" for role in ROLES}
        groups.append(
            BlockGroups(
                name=name,
                heads=num_heads(block, layout),
                head_dim=head_dim(block, layout),
                units=num_units(block, layout),
                hidden=get_submodule(block, layout.query).in_features,
                params=params,
            )
        )
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no transformer block of its family's layout; "
            "structured pruning needs attention and MLP modules where hf_afr.architectures says."
        )
    return groups


def prunable_group_weights(groups: list[BlockGroups], kinds: tuple[str, ...]) -> int:
    """Weights that the groups of `kinds` own together (the most structure can remove)."""
    return sum(g.count(kind) * g.cost(kind) for g in groups for kind in kinds)
