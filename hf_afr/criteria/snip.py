"""SNIP (Lee et al., 2019): score = |dL/dw * w|, L the downstream cross-entropy."""

from __future__ import annotations

import torch

from .gradients import accumulate_gradients, connection_sensitivity
from .registry import register_criterion


@register_criterion("snip", needs_labels=True)
def snip_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """|dL/dw * w| with the loss gradients summed over the scoring batches."""
    (grads,) = accumulate_gradients(model, batches, params, config, objectives=("loss",))
    return connection_sensitivity(grads, params)
