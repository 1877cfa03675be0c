"""Exact structural shrinking: remove the units and dimensions that pruning emptied.

The rules (derived in docs/inference.md), for weights read as exact zeros:

1. MLP `fc2(act(fc1 x))`: a hidden unit whose `fc2` column is empty contributes nothing;
   one whose `fc1` row is empty outputs the constant `act(b1_j)`, which `fc2` turns into the
   constant vector `act(b1_j) * W2[:, j]`, added to `fc2.bias`. Both are removed.
2. Values: a value dimension whose `o_proj` column is empty contributes nothing; one whose
   `v_proj` row is empty equals `b_v[d]` for every token, and since each query's attention
   weights sum to one, the attention output is `b_v[d]` too: `b_v[d] * W_o[:, d]` goes into
   `o_proj.bias`. Both are removed.
3. Queries/keys: a dimension whose `k_proj` row is empty adds `q_i[d] * b_k[d]` to every logit
   of query i (constant along the keys, which softmax ignores); one whose `q_proj` row is empty
   *and* whose query bias is zero adds nothing. Both are removed. An empty `q_proj` row with a
   nonzero bias adds `b_q[d] * k_j[d]`, which varies along the keys: it stays.
4. A head none of whose value dimensions remain outputs a constant (rule 2): it is removed with
   its query/key dimensions. Heads are padded with zero weights to the largest kept size, which
   adds exact zeros; the attention scaling stays that of the unshrunk head size.

Every shrunk block is checked against its unshrunk self on a random probe and restored (with a
warning) if they differ; blocks whose layout is not understood are skipped with a logged reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.utils import logging

from ..architectures import get_architecture
from ..structure.slicing import transformer_layers
from .attention import (
    AttentionNames,
    ShrunkAttentionMixin,
    attention_geometry,
    attention_names,
    looks_like_attention,
    reference_attention,
)
from .checks import close, probe_input
from .guard import check_masks, mark_inference_only, shrunk_class
from .mlp import ShrunkMLPMixin, mlp_activation
from .report import BlockShrink, ShrinkReport

logger = logging.get_logger(__name__)

FilterFn = Callable[[nn.Module, str], bool]


def _take(tensor: torch.Tensor | None, index: torch.Tensor, dim: int) -> torch.Tensor | None:
    """`tensor.index_select(dim, index)` where index -1 selects a slice of zeros."""
    if tensor is None:
        return None
    pad_shape = list(tensor.shape)
    pad_shape[dim] = 1
    padded = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim)
    return padded.index_select(dim, torch.where(index < 0, tensor.shape[dim], index))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = torch.nn.utils.skip_init(
        nn.Linear,
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias)
    return layer.requires_grad_(False)


def _empty_rows(weight: torch.Tensor) -> torch.Tensor:
    return ~weight.ne(0).any(dim=1)


def _empty_cols(weight: torch.Tensor) -> torch.Tensor:
    return ~weight.ne(0).any(dim=0)


def _macs(*layers: nn.Linear) -> int:
    return sum(layer.in_features * layer.out_features for layer in layers)


@torch.no_grad()
def shrink_mlp(module: nn.Module, name: str = "") -> BlockShrink | None:
    """Apply rule 1 to an `fc1 -> act -> fc2` block in place; None if nothing is removable."""
    act = mlp_activation(module)
    fc1, fc2 = module.fc1, module.fc2
    dead_out = _empty_cols(fc2.weight)
    folded = _empty_rows(fc1.weight) & ~dead_out
    keep = ~(dead_out | folded)
    if bool(keep.all()):
        return None
    b1 = fc1.bias if fc1.bias is not None else fc1.weight.new_zeros(fc1.out_features)
    constants = act(b1[folded]).double()
    b2 = fc2.bias.double() if fc2.bias is not None else constants.new_zeros(fc2.out_features)
    b2 = b2 + fc2.weight[:, folded].double() @ constants
    index = keep.nonzero().squeeze(1)
    if index.numel() == 0:  # keep one all-zero unit so that every shape stays valid
        index = index.new_full((1,), -1)
    macs_before = _macs(fc1, fc2)
    module.fc1 = _linear(_take(fc1.weight, index, 0), _take(fc1.bias, index, 0))
    module.fc2 = _linear(_take(fc2.weight, index, 1), b2.to(fc2.weight.dtype))
    units = keep.numel()
    removed = (
        f"{int(folded.sum())} units with an empty fc1 row (act(bias) folded into fc2.bias), "
        f"{int(dead_out.sum())} with an empty fc2 column"
    )
    module.__class__ = shrunk_class(type(module), ShrunkMLPMixin)
    module.hf_afr_removed = f"hidden units {units} -> {int(keep.sum())}: {removed}"
    return BlockShrink(
        name, "mlp", f"{units} units", f"{int(keep.sum())} units", removed,
        macs_before, _macs(module.fc1, module.fc2), units, int(keep.sum()),
    )  # fmt: skip


def _head_index(keep: torch.Tensor, heads: list[int], size: int) -> torch.Tensor:
    """Flat row indices of the kept dims of `heads`, each head padded with -1 to `size`."""
    per_head = keep.shape[1]
    rows = []
    for h in heads:
        dims = (keep[h].nonzero().squeeze(1) + h * per_head).tolist()
        rows += dims + [-1] * (size - len(dims))
    return torch.tensor(rows or [-1] * size, dtype=torch.long, device=keep.device)


def _attention_masks(module: nn.Module, layout, heads: int, qk: int, v: int):
    """Per-head keep masks of q/k dims and v dims (rules 2-3), and the folded v dims."""
    q, k = getattr(module, layout.query), getattr(module, layout.key)
    val, out = getattr(module, layout.value), getattr(module, layout.output)
    q_bias_zero = q.bias.eq(0) if q.bias is not None else torch.ones_like(_empty_rows(q.weight))
    qk_keep = ~(_empty_rows(k.weight) | (_empty_rows(q.weight) & q_bias_zero))
    dead_out = _empty_cols(out.weight)
    folded = _empty_rows(val.weight) & ~dead_out
    v_keep = ~(dead_out | folded)
    return qk_keep.view(heads, qk), v_keep.view(heads, v), folded


def _projections_of(module: nn.Module, layout) -> tuple[nn.Linear, ...]:
    return tuple(
        getattr(module, n) for n in (layout.query, layout.key, layout.value, layout.output)
    )


def _rebuild_attention(module, layout, qk_index, v_index, folded) -> None:
    """Replace the four projections by their kept (and zero-padded) rows and columns."""
    q, k, val, out = _projections_of(module, layout)
    o_bias = torch.zeros(out.out_features, dtype=torch.float64, device=out.weight.device)
    if out.bias is not None:
        o_bias += out.bias.double()
    if val.bias is not None:  # rule 2: b_v[d] * W_o[:, d] for every folded value dim
        o_bias += out.weight[:, folded].double() @ val.bias[folded].double()
    new = {
        layout.query: _linear(_take(q.weight, qk_index, 0), _take(q.bias, qk_index, 0)),
        layout.key: _linear(_take(k.weight, qk_index, 0), _take(k.bias, qk_index, 0)),
        layout.value: _linear(_take(val.weight, v_index, 0), _take(val.bias, v_index, 0)),
        layout.output: _linear(_take(out.weight, v_index, 1), o_bias.to(out.weight.dtype)),
    }
    for name, layer in new.items():
        setattr(module, name, layer)


@torch.no_grad()
def shrink_attention(
    module: nn.Module, layout: AttentionNames, name: str = ""
) -> BlockShrink | None:
    """Apply rules 2-4 to a plain attention module in place; None if nothing is removable."""
    heads, qk, v = attention_geometry(module, layout)
    qk_keep, v_keep, folded = _attention_masks(module, layout, heads, qk, v)
    kept = [h for h in range(heads) if bool(v_keep[h].any())]
    qk_sizes, v_sizes = [int(qk_keep[h].sum()) for h in kept], [int(v_keep[h].sum()) for h in kept]
    new_qk, new_v = max(qk_sizes + [1]), max(v_sizes + [1])
    if len(kept) == heads and new_qk == qk and new_v == v:
        return None
    macs_before = _macs(*_projections_of(module, layout))
    qk_index = _head_index(qk_keep, kept, new_qk)
    v_index = _head_index(v_keep, kept, new_v)
    _rebuild_attention(module, layout, qk_index, v_index, folded)
    new_heads = max(len(kept), 1)  # an emptied block keeps one all-zero head
    setattr(module, layout.num_heads, new_heads)
    module.head_dim = module.qk_head_dim = new_qk
    module.v_head_dim = new_v
    module.hf_afr_layout = layout
    module.__class__ = shrunk_class(type(module), ShrunkAttentionMixin)
    scaling = float(getattr(module, layout.scaling))
    module.hf_afr_removed = (
        f"heads {heads} -> {len(kept)}, q/k dims per head {qk} -> {new_qk}, v dims per head "
        f"{v} -> {new_v} (heads zero-padded to the largest), scaling {scaling:.6g} kept"
    )
    removed = (
        f"{heads - len(kept)} heads; q/k dims kept per head {qk_sizes}; v dims kept per head "
        f"{v_sizes} ({int(folded.sum())} v dims folded into the output bias)"
    )
    return BlockShrink(
        name, "attention", f"{heads}x({qk}, {v})", f"{new_heads}x({new_qk}, {new_v})", removed,
        macs_before, _macs(*_projections_of(module, layout)), heads * (qk + v),
        new_heads * (new_qk + new_v),
    )  # fmt: skip


def _attention_modules(model: nn.Module) -> dict[str, AttentionNames | None]:
    """`{name: names}` of the attention modules of the model's family layout (None: not plain)."""
    try:
        layout = get_architecture(model).layout
    except ValueError:
        return {}
    names = attention_names(layout)
    return {
        f"{block}.{layout.attention}".lstrip("."): names
        for block in transformer_layers(model, layout)
    }


def _run_block(module: nn.Module, names: AttentionNames | None, x: torch.Tensor) -> torch.Tensor:
    return module(x)[0] if names is not None else module(x)


def _reference(module: nn.Module, names: AttentionNames | None, x: torch.Tensor) -> torch.Tensor:
    if names is not None:
        return reference_attention(module, names, x)
    return module.fc2(mlp_activation(module)(module.fc1(x)))


def _projections(module: nn.Module, names: AttentionNames | None) -> tuple[nn.Linear, ...]:
    if names is None:
        return module.fc1, module.fc2
    return _projections_of(module, names)


def _unchanged(module: nn.Module, name: str, names: AttentionNames | None) -> BlockShrink:
    if names is None:
        kind, size, units = "mlp", f"{module.fc1.out_features} units", module.fc1.out_features
    else:
        heads, qk, v = attention_geometry(module, names)
        kind, size, units = "attention", f"{heads}x({qk}, {v})", heads * (qk + v)
    macs = _macs(*_projections(module, names))
    return BlockShrink(name, kind, size, size, "nothing", macs, macs, units, units)


@torch.no_grad()
def _shrink_block(
    module: nn.Module, name: str, names: AttentionNames | None, atol: float | None
) -> BlockShrink | str:
    """Shrink one block (an attention if `names` is given, else an MLP) after checking it on a
    probe; a string says why it was skipped."""
    first = _projections(module, names)[0]
    x = probe_input(first.in_features, first.weight.dtype, first.weight.device)
    expected = _run_block(module, names, x)
    if not close(_reference(module, names, x), expected, atol):
        kind = "mlp" if names is None else "attention"
        return f"its output differs from plain {kind} computed from its projections (unsupported layout)"
    saved = (module.__class__, dict(module._modules), dict(module.__dict__))
    result = shrink_mlp(module, name) if names is None else shrink_attention(module, names, name)
    if result is None:
        return _unchanged(module, name, names)
    if not close(_run_block(module, names, x), expected, atol):
        module.__class__ = saved[0]
        module.__dict__.clear()
        module.__dict__.update(saved[2])
        module._modules.clear()
        module._modules.update(saved[1])
        return "the shrunk block did not reproduce the original on a probe; left unchanged"
    return result


def shrink(
    model: nn.Module,
    masks: dict[str, torch.Tensor] | None = None,
    filter_fn: FilterFn | None = None,
    atol: float | None = None,
) -> ShrinkReport:
    """Remove, exactly and in place, what pruning emptied: MLP hidden units, value and query/key
    dimensions, whole heads. The model stays the same transformers class with smaller submodules
    (`pipeline`, `torch.inference_mode()` and `torch.compile` work); it is put in eval mode and
    can no longer be trained or saved (reload the pruned checkpoint for that).

    Args:
        model (`nn.Module`): a pruned model (exact zeros in the pruned places), e.g. loaded with
            `AutoModelForImageClassification.from_pretrained`.
        masks (`dict[str, Tensor]`, *optional*): the pruning masks (True = kept); if given, the
            weights are checked to be zero wherever a mask prunes.
        filter_fn (`Callable[[nn.Module, str], bool]`, *optional*): called with each candidate
            block and its name; return False to leave it alone.
        atol (`float`, *optional*): tolerance of the per-block probe check, relative to the
            block's output scale; defaults to 1e-4 for float32 and 2e-2 for 16-bit weights.

    Returns:
        `ShrinkReport`: per block what was removed and the Linear multiply-adds before/after.

    Example:
        ```python
        >>> model = AutoModelForImageClassification.from_pretrained("vit-afr90")
        >>> report = hf_afr.shrink(model)
        >>> print(report)  # per block: units/heads/dims removed and Linear MACs per token
        ```
    """
    if masks is not None:
        check_masks(model, masks)
    model.eval()
    report = ShrinkReport()
    attention = _attention_modules(model)
    for name, module in list(model.named_modules()):
        names = attention.get(name)
        unplain = name in attention and names is None
        if unplain or (name not in attention and looks_like_attention(module)):
            report.skipped[name] = (
                f"{type(module).__name__} is not a registered attention layout (plain "
                "multi-head attention of a family in hf_afr.architectures without per-head tables)"
            )
            continue
        if names is None and mlp_activation(module) is None:
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        result = _shrink_block(module, name, names, atol)
        if isinstance(result, str):
            report.skipped[name] = result
        else:
            report.blocks.append(result)
    for name, reason in report.skipped.items():
        logger.warning(f"shrink: skipped {name}: {reason}.")
    mark_inference_only(model)
    logger.info(
        f"shrink: Linear multiply-adds of the examined blocks -{report.macs_reduction:.1%}."
    )
    return report


def shrinkable(model: nn.Module, filter_fn: FilterFn | None = None) -> ShrinkReport:
    """What `shrink` would remove from `model`, computed on a copy (the model is unchanged)."""
    import copy

    with torch.no_grad():
        clone = copy.deepcopy(model)
    return shrink(clone, filter_fn=filter_fn)
