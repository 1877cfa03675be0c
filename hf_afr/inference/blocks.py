"""Which blocks `shrink` understands: MLPs found by structure, attention by a layout registry.

An MLP is any module with `nn.Linear` children `fc1` and `fc2` and an elementwise activation
attribute, whose output equals `fc2(act(fc1(x)))` on a random probe. Attention needs more
than structure (a relative position bias or a gated output would break the rules), so it is
matched by class name in `ATTENTION_LAYOUTS`, one entry per family whose forward is plain
multi-head attention, and also checked on a probe. A family with the same layout is one
entry here plus a test; anything else is skipped with a logged reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward

MLP_ACTIVATION_NAMES = ("activation_fn", "activation", "act_fn", "act")


@dataclass(frozen=True)
class AttentionLayout:
    """Attribute names of a plain multi-head attention module (transformers 5 vision layout)."""

    query: str = "q_proj"
    key: str = "k_proj"
    value: str = "v_proj"
    output: str = "o_proj"
    num_heads: str = "num_attention_heads"
    scaling: str = "scaling"


_VIT = AttentionLayout()
_CLIP = AttentionLayout(output="out_proj", num_heads="num_heads", scaling="scale")

ATTENTION_LAYOUTS: dict[str, AttentionLayout] = {
    "ViTAttention": _VIT,
    "DeiTAttention": _VIT,
    "Dinov2Attention": _VIT,
    "Dinov2WithRegistersAttention": _VIT,
    "ViTMAEAttention": _VIT,
    "ViTMSNAttention": _VIT,
    "IJepaAttention": _VIT,
    "CLIPAttention": _CLIP,
    "SiglipAttention": _CLIP,
}
"""Attention classes (by name) whose forward is `out(softmax(q k^T * scaling + mask) v)`."""


def mlp_activation(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The activation of an `fc1 -> act -> fc2` block, or None if `module` is not one."""
    fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
        return None
    if fc1.out_features != fc2.in_features:
        return None
    for name in MLP_ACTIVATION_NAMES:
        act = getattr(module, name, None)
        if callable(act):
            return act
    return None


def attention_layout(module: nn.Module) -> AttentionLayout | None:
    """The registered layout of an attention module (also once shrunk), or None."""
    for cls in type(module).__mro__:
        if cls.__name__ in ATTENTION_LAYOUTS:
            return ATTENTION_LAYOUTS[cls.__name__]
    return None


def looks_like_attention(module: nn.Module) -> bool:
    """Whether a module has q/k/v projections (reported when its class is not registered)."""
    return all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")
    )


def attention_geometry(module: nn.Module, layout: AttentionLayout) -> tuple[int, int, int]:
    """`(heads, q/k dims per head, v dims per head)` of a (possibly shrunk) attention module."""
    heads = int(getattr(module, layout.num_heads))
    qk = getattr(module, "qk_head_dim", None) or getattr(module, layout.query).out_features // heads
    v = getattr(module, "v_head_dim", None) or getattr(module, layout.value).out_features // heads
    return heads, qk, v


def reference_attention(
    module: nn.Module, layout: AttentionLayout, x: torch.Tensor
) -> torch.Tensor:
    """Plain multi-head attention computed from the module's projections (a second implementation)."""
    heads, qk, v = attention_geometry(module, layout)
    batch, tokens, _ = x.shape

    def split(name: str, dim: int) -> torch.Tensor:
        return getattr(module, name)(x).view(batch, tokens, heads, dim).transpose(1, 2)

    q, k, val = split(layout.query, qk), split(layout.key, qk), split(layout.value, v)
    logits = (q @ k.transpose(-1, -2)) * float(getattr(module, layout.scaling))
    out = torch.softmax(logits.double(), dim=-1).to(x.dtype) @ val
    return getattr(module, layout.output)(out.transpose(1, 2).reshape(batch, tokens, heads * v))


class ShrunkAttentionMixin:
    """Forward of a shrunk attention: q/k and v may have different (smaller) per-head sizes.

    The projections are smaller; for the attention kernel itself the smaller of q/k and v is
    zero-padded to the other's size (exact: zeros add nothing to the logits, and padded value
    columns are sliced off), because fused kernels (CPU and CUDA flash attention) need equal
    head sizes and fall back to much slower paths otherwise. The scaling stays the one of the
    unshrunk model (`1/sqrt(original head_dim)`): the logits are unchanged, only dimensions that
    contribute nothing or a softmax-invariant constant are gone.
    """

    hf_afr_layout: AttentionLayout
    qk_head_dim: int
    v_head_dim: int
    hf_afr_removed: str

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        layout = self.hf_afr_layout
        input_shape = hidden_states.shape[:-1]
        qk, v_dim = self.qk_head_dim, self.v_head_dim
        size = max(qk, v_dim)
        q = getattr(self, layout.query)(hidden_states).view(*input_shape, -1, qk).transpose(1, 2)
        k = getattr(self, layout.key)(hidden_states).view(*input_shape, -1, qk).transpose(1, 2)
        v = getattr(self, layout.value)(hidden_states).view(*input_shape, -1, v_dim).transpose(1, 2)
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
            scaling=getattr(self, layout.scaling),
            **kwargs,
        )
        out = out[..., :v_dim].reshape(*input_shape, -1).contiguous()
        return getattr(self, layout.output)(out), weights

    def extra_repr(self) -> str:
        return self.hf_afr_removed


class ShrunkMLPMixin:
    """Marks an MLP whose hidden units pruning emptied were removed; states what was removed."""

    hf_afr_removed: str

    def extra_repr(self) -> str:
        return self.hf_afr_removed


_SHRUNK_CLASSES: dict[tuple[type, type], type] = {}


def shrunk_class(cls: type, mixin: type) -> type:
    """`Shrunk<cls>`: a subclass of `cls` (isinstance checks still hold) with `mixin` first."""
    if issubclass(cls, mixin):
        return cls
    key = (cls, mixin)
    if key not in _SHRUNK_CLASSES:
        _SHRUNK_CLASSES[key] = type(f"Shrunk{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _SHRUNK_CLASSES[key]


def probe_input(hidden: int, dtype: torch.dtype, device: torch.device, tokens: int = 7):
    """A fixed random `(2, tokens, hidden)` input for checking a block before and after."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, tokens, hidden, generator=generator, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


def default_atol(dtype: torch.dtype) -> float:
    """Tolerance of the output checks, relative to the output scale: float32 1e-4, 16-bit 2e-2."""
    return 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None) -> bool:
    """`max |actual - expected| <= atol * max(1, max |expected|)` (atol from the dtype if None)."""
    atol = default_atol(expected.dtype) if atol is None else atol
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    diff = float((actual.double() - expected.double()).abs().max()) if expected.numel() else 0.0
    return math.isfinite(diff) and diff <= atol * scale
