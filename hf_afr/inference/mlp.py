"""The MLPs `shrink` understands, found by structure: `fc2(act(fc1 x))`.

An MLP is any module with `nn.Linear` children `fc1` and `fc2` and an elementwise activation
attribute; each candidate is also checked on a probe against `fc2(act(fc1(x)))`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MLP_ACTIVATION_NAMES = ("activation_fn", "activation", "act_fn", "act")


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


class ShrunkMLPMixin:
    """Marks an MLP whose hidden units pruning emptied were removed; states what was removed."""

    hf_afr_removed: str

    def extra_repr(self) -> str:
        return self.hf_afr_removed
