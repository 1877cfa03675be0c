"""GraSP (Wang et al., 2020): keep the weights that preserve the gradient flow.

`g = dL/dw` summed over the scoring batches (L the mean cross-entropy of a batch, as for
SNIP), then `Hg`, the Hessian of the same summed loss times `g`, from one Hessian-vector
product per (micro-)batch: the gradient of `g.detach() . dL/dw` with respect to `w`
(double backward). GraSP removes the weights with the *highest* `w * Hg` (removing them
reduces the gradient norm least, or increases it), so the importance returned here is

    score = -w * Hg        (higher = more important, as for every criterion).

The published code divides the logits by a temperature (T = 200) before the loss; hf_afr uses
the plain cross-entropy, the loss SNIP and AFR score with. Double backward needs attention
kernels that support it: scoring runs with PyTorch's math SDPA backend (on GPUs the fused
kernels have no second derivative). Cost: the gradient pass plus one pass with a double
backward per batch, about 3-4x SNIP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_gradient_sums
from .gradients import _micro_batches, accumulate_gradients, prepare_batch, scoring_mode
from .registry import register_criterion


def _math_attention() -> contextlib.AbstractContextManager:
    """The math SDPA backend (the only one with a second derivative everywhere)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def hessian_gradient_product(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    params: dict[str, nn.Parameter],
    vector: dict[str, torch.Tensor],
    micro_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """`H v` in float32, H the Hessian (w.r.t. `params`) of the loss summed over `batches`.

    Each batch's loss is its mean cross-entropy; a batch split into micro-batches weighs each
    micro-batch's mean loss by its share of the batch, so the result does not depend on
    `micro_batch_size`.
    """
    names, weights = list(params), list(params.values())
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    num_batches = 0
    with scoring_mode(model, params), _math_attention():
        for raw_batch in batches:
            batch = prepare_batch(raw_batch, model, needs_labels=True)
            n_total = batch["pixel_values"].shape[0]
            for mb in _micro_batches(batch, micro_batch_size):
                logits = model(pixel_values=mb["pixel_values"]).logits.float()
                loss = F.cross_entropy(logits, mb["labels"]) * (mb["labels"].shape[0] / n_total)
                grads = torch.autograd.grad(loss, weights, create_graph=True)
                dot = sum((g * vector[name].to(g.dtype)).sum() for name, g in zip(names, grads))
                hv = torch.autograd.grad(dot, weights)
                for name, h in zip(names, hv):
                    sums[name].add_(h)
            num_batches += 1
    all_reduce_gradient_sums([sums], num_batches)
    return sums


@register_criterion("grasp", needs_labels=True)
def grasp_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    params: dict[str, nn.Parameter],
    config,
) -> dict[str, torch.Tensor]:
    """`-w * Hg` with `g` the loss gradient summed over the scoring batches."""
    if getattr(config, "gradient_checkpointing", False):
        raise ValueError(
            "GraSP needs a double backward, which activation checkpointing does not run here: "
            "set `gradient_checkpointing=False` (use `micro_batch_size` to bound memory)."
        )
    batches = list(batches)  # read twice: for g, then for Hg
    (g,) = accumulate_gradients(model, batches, params, config, objectives=("loss",))
    hg = hessian_gradient_product(model, batches, params, g, config.micro_batch_size)
    with torch.no_grad():
        return {name: hg[name].mul_(p.detach().float()).neg_() for name, p in params.items()}
