"""Remove attention heads and MLP hidden units from transformer blocks: exact, in place, trainable.

A head is its `head_dim` rows of the query, key and value projections (and of their biases),
its `head_dim` input columns of the attention output projection, and its column of every
per-head table (Swin's and BEiT's relative position bias). An MLP unit is its row of `fc1`
(and bias) and its column of `fc2`. Removing a head is exactly the same as multiplying its
context vector by zero (softmax is taken per head), and removing a unit is exactly the same as
multiplying its activation by zero, so a sliced block computes what the gated block computes.

The modules stay the same objects of the same transformers classes, with smaller, trainable
`nn.Linear` weights (`nn.Parameter`s with the same names, so state-dict keys do not change);
the attention's head-count attributes are updated so that its forward sees the new width.

This module imports only torch and transformers and receives the family's attribute names as
a `BlockLayout` argument, so the same file can live beside a checkpoint as a self-contained
loader (`set_widths` rebuilds a pruned model's shapes from its per-layer widths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockLayout:
    """Where a family keeps the parts of one transformer block (dotted paths from the block).

    Args:
        query, key, value (`str`): the `nn.Linear` projections whose output rows are per head.
        output (`str`): the attention output `nn.Linear`, whose input columns are per head.
        attention (`str`): the module holding the head-count attributes.
        head_count (`tuple[str, ...]`): attributes of that module equal to the number of heads.
        head_width (`tuple[str, ...]`): attributes equal to heads * head_dim (Data2Vec's
            `all_head_size`).
        head_tables (`tuple[str, ...]`): per-head parameters, heads along the last axis (relative
            position bias tables); a path that does not exist in a given model is ignored.
        scaling (`str`): the attention module's logit scaling attribute.
        fc1, fc2 (`str`): the MLP's input and output `nn.Linear`s.
    """

    query: str = "attention.q_proj"
    key: str = "attention.k_proj"
    value: str = "attention.v_proj"
    output: str = "attention.o_proj"
    attention: str = "attention"
    head_count: tuple[str, ...] = ("num_attention_heads",)
    head_width: tuple[str, ...] = ()
    head_tables: tuple[str, ...] = ()
    scaling: str = "scaling"
    fc1: str = "mlp.fc1"
    fc2: str = "mlp.fc2"


def get_submodule(module: nn.Module, path: str):
    """The attribute at dotted `path` below `module`, or None if some part is missing."""
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def transformer_layers(model: nn.Module, layout: BlockLayout) -> dict[str, nn.Module]:
    """`{name: block}` of the blocks holding an attention and an MLP of `layout`, in model order.

    One entry per transformer block: a ViT's `ViTLayer`s, each `SwinLayer` of every Swin stage.
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(get_submodule(module, layout.query), nn.Linear)
        and isinstance(get_submodule(module, layout.fc1), nn.Linear)
    }


def num_heads(block: nn.Module, layout: BlockLayout) -> int:
    """The block's current number of attention heads."""
    return int(getattr(get_submodule(block, layout.attention), layout.head_count[0]))


def head_dim(block: nn.Module, layout: BlockLayout) -> int:
    """The width of one head (never changed by slicing)."""
    return get_submodule(block, layout.query).out_features // num_heads(block, layout)


def num_units(block: nn.Module, layout: BlockLayout) -> int:
    """The block's current number of MLP hidden units."""
    return get_submodule(block, layout.fc1).out_features


def _kept(index: Sequence[int], total: int, what: str) -> list[int]:
    kept = sorted({int(i) for i in index})
    if not kept:
        raise ValueError(f"Every block must keep at least one {what}; got an empty list.")
    if kept[0] < 0 or kept[-1] >= total:
        raise ValueError(f"{what} indices must lie in [0, {total}); got {kept[0]}..{kept[-1]}.")
    return kept


def _replace(owner: nn.Module, name: str, tensor: torch.Tensor, like: nn.Parameter) -> None:
    setattr(owner, name, nn.Parameter(tensor.contiguous(), requires_grad=like.requires_grad))


@torch.no_grad()
def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep the output rows (`dim=0`, bias too) or input columns (`dim=1`) listed in `index`."""
    index = index.to(linear.weight.device)
    _replace(linear, "weight", linear.weight.index_select(dim, index), linear.weight)
    if dim == 0:
        if linear.bias is not None:
            _replace(linear, "bias", linear.bias.index_select(0, index), linear.bias)
        linear.out_features = index.numel()
    else:
        linear.in_features = index.numel()


@torch.no_grad()
def keep_heads(block: nn.Module, layout: BlockLayout, heads: Sequence[int]) -> None:
    """Keep only `heads` (indices into the block's current heads) of the block's attention.

    Raises:
        `ValueError`: an empty list or an index out of range.
    """
    total, size = num_heads(block, layout), head_dim(block, layout)
    kept = _kept(heads, total, "attention head")
    if len(kept) == total:
        return
    head_index = torch.tensor(kept, dtype=torch.long)
    rows = (head_index[:, None] * size + torch.arange(size)).flatten()
    for path in (layout.query, layout.key, layout.value):
        _slice_linear(get_submodule(block, path), rows, 0)
    _slice_linear(get_submodule(block, layout.output), rows, 1)
    for path in layout.head_tables:
        table = get_submodule(block, path)
        if table is None:
            continue
        owner_path, _, name = path.rpartition(".")
        owner = get_submodule(block, owner_path) if owner_path else block
        _replace(owner, name, table.index_select(-1, head_index.to(table.device)), table)
    attention = get_submodule(block, layout.attention)
    for attr in layout.head_count:
        setattr(attention, attr, len(kept))
    for attr in layout.head_width:
        setattr(attention, attr, len(kept) * size)


@torch.no_grad()
def keep_units(block: nn.Module, layout: BlockLayout, units: Sequence[int]) -> None:
    """Keep only the MLP hidden `units` (indices into the block's current units).

    Raises:
        `ValueError`: an empty list or an index out of range.
    """
    kept = _kept(units, num_units(block, layout), "MLP unit")
    index = torch.tensor(kept, dtype=torch.long)
    if len(kept) == num_units(block, layout):
        return
    _slice_linear(get_submodule(block, layout.fc1), index, 0)
    _slice_linear(get_submodule(block, layout.fc2), index, 1)


def prune_heads(block: nn.Module, layout: BlockLayout, heads: Sequence[int]) -> None:
    """Remove `heads` from the block's attention (the complement of `keep_heads`)."""
    removed = {int(h) for h in heads}
    keep_heads(block, layout, [h for h in range(num_heads(block, layout)) if h not in removed])


def prune_units(block: nn.Module, layout: BlockLayout, units: Sequence[int]) -> None:
    """Remove MLP hidden `units` from the block (the complement of `keep_units`)."""
    removed = {int(u) for u in units}
    keep_units(block, layout, [u for u in range(num_units(block, layout)) if u not in removed])


def layer_widths(model: nn.Module, layout: BlockLayout) -> tuple[list[int], list[int]]:
    """`(heads per block, MLP units per block)` in `transformer_layers` order."""
    blocks = transformer_layers(model, layout).values()
    return [num_heads(b, layout) for b in blocks], [num_units(b, layout) for b in blocks]


def set_widths(
    model: nn.Module, layout: BlockLayout, heads: Sequence[int], units: Sequence[int]
) -> None:
    """Give every block the first `heads[i]` heads and `units[i]` MLP units (for loading).

    A pruned checkpoint's weights then load into the model with `load_state_dict`: this builds
    the shapes, the checkpoint supplies the values.

    Raises:
        `ValueError`: lists whose lengths differ from the number of blocks.
    """
    blocks = list(transformer_layers(model, layout).values())
    if len(heads) != len(blocks) or len(units) != len(blocks):
        raise ValueError(
            f"The model has {len(blocks)} transformer blocks but the widths list "
            f"{len(heads)} head counts and {len(units)} MLP widths; they must match."
        )
    for block, n_heads, n_units in zip(blocks, heads, units):
        keep_heads(block, layout, range(int(n_heads)))
        keep_units(block, layout, range(int(n_units)))


def sized_class(cls: type[nn.Module], layout: BlockLayout) -> type[nn.Module]:
    """A subclass of `cls` whose `__init__` gives each block the widths its config records.

    The config lists (`layer_num_attention_heads`, `layer_intermediate_sizes`, one entry per
    `transformer_layers` block) are applied right after `cls.__init__`, so `from_pretrained`
    loads a pruned checkpoint into the right shapes with transformers' own loading (key renames
    included). Put the loaded model back into `cls` afterwards: `model.__class__ = cls`.
    """

    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        heads = getattr(config, "layer_num_attention_heads", None)
        if heads is not None:
            set_widths(self, layout, heads, config.layer_intermediate_sizes)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})
