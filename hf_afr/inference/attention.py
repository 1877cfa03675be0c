"""The attention modules `shrink` understands: plain multi-head attention of a family's layout.

The family's block layout (`hf_afr.architectures.VisionArchitecture.layout`) says where its
attention projections are. `shrink` takes only attention whose four projections live in one
module and whose forward is `out(softmax(q k^T * scaling + mask) v)` with nothing per head
beside the projections (no relative position bias table); every candidate is also checked on a
probe against `reference_attention`, an independent computation from the projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward

from ..structure.slicing import BlockLayout


@dataclass(frozen=True)
class AttentionNames:
    """Attribute names of a plain multi-head attention module, relative to that module."""

    query: str
    key: str
    value: str
    output: str
    num_heads: str
    scaling: str


def attention_names(layout: BlockLayout) -> AttentionNames | None:
    """The names of a layout's attention relative to its attention module, or None when the
    layout is not plain attention (projections in other modules, per-head tables)."""
    prefix = f"{layout.attention}."
    paths = (layout.query, layout.key, layout.value, layout.output)
    if layout.head_tables or not all(p.startswith(prefix) for p in paths):
        return None
    relative = [p.removeprefix(prefix) for p in paths]
    if any("." in p for p in relative) or not layout.scaling:
        return None
    return AttentionNames(*relative, layout.head_count[0], layout.scaling)


def looks_like_attention(module: nn.Module) -> bool:
    """Whether a module has q/k/v projections (reported when its class is not registered)."""
    return all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")
    )


def attention_geometry(module: nn.Module, names: AttentionNames) -> tuple[int, int, int]:
    """`(heads, q/k dims per head, v dims per head)` of a (possibly shrunk) attention module."""
    heads = int(getattr(module, names.num_heads))
    qk = getattr(module, "qk_head_dim", None) or getattr(module, names.query).out_features // heads
    v = getattr(module, "v_head_dim", None) or getattr(module, names.value).out_features // heads
    return heads, qk, v


def reference_attention(module: nn.Module, names: AttentionNames, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head attention computed from the module's projections (a second implementation)."""
    heads, qk, v = attention_geometry(module, names)
    batch, tokens, _ = x.shape

    def split(name: str, dim: int) -> torch.Tensor:
        return getattr(module, name)(x).view(batch, tokens, heads, dim).transpose(1, 2)

    q, k, val = split(names.query, qk), split(names.key, qk), split(names.value, v)
    logits = (q @ k.transpose(-1, -2)) * float(getattr(module, names.scaling))
    out = torch.softmax(logits.double(), dim=-1).to(x.dtype) @ val
    return getattr(module, names.output)(out.transpose(1, 2).reshape(batch, tokens, heads * v))


class ShrunkAttentionMixin:
    """Forward of a shrunk attention: q/k and v may have different (smaller) per-head sizes.

    The projections are smaller; for the attention kernel itself the smaller of q/k and v is
    zero-padded to the other's size (exact: zeros add nothing to the logits, and padded value
    columns are sliced off), because fused kernels (CPU and CUDA flash attention) need equal
    head sizes and fall back to much slower paths otherwise. The scaling stays the one of the
    unshrunk model (`1/sqrt(original head_dim)`): the logits are unchanged, only dimensions that
    contribute nothing or a softmax-invariant constant are gone.
    """

    hf_afr_layout: AttentionNames
    qk_head_dim: int
    v_head_dim: int
    hf_afr_removed: str

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        names = self.hf_afr_layout
        input_shape = hidden_states.shape[:-1]
        qk, v_dim = self.qk_head_dim, self.v_head_dim
        size = max(qk, v_dim)
        q = getattr(self, names.query)(hidden_states).view(*input_shape, -1, qk).transpose(1, 2)
        k = getattr(self, names.key)(hidden_states).view(*input_shape, -1, qk).transpose(1, 2)
        v = getattr(self, names.value)(hidden_states).view(*input_shape, -1, v_dim).transpose(1, 2)
        if qk < size:
            q, k = F.pad(q, (0, size - qk)), F.pad(k, (0, size - qk))
        if v_dim < size:
            v = F.pad(v, (0, size - v_dim))
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0,
            scaling=getattr(self, names.scaling),
            **kwargs,
        )
        out = out[..., :v_dim].reshape(*input_shape, -1).contiguous()
        return getattr(self, names.output)(out), weights

    def extra_repr(self) -> str:
        return self.hf_afr_removed
