"""ReFer: score = |d(sum_l F_svd^l)/dw * w|, F_svd^l the mean singular value of layer l's features."""

from __future__ import annotations

import torch

from .gradients import accumulate_gradients, connection_sensitivity
from .registry import register_criterion


@register_criterion("refer", reads_features=True)
def refer_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """|dR/dw * w| with R the feature-retention objective (see `gradients.refer_objective`)."""
    (grads,) = accumulate_gradients(model, batches, params, config, objectives=("refer",))
    return connection_sensitivity(grads, params)
