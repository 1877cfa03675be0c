"""SynFlow (Tanaka et al., 2020): iterative, data-free synaptic-flow pruning.

The objective is `R = sum(logits)` of the model with every parameter replaced by its absolute
value, fed one all-ones image: for a network of linear layers this is `1^T (prod_l |W_l|) 1`,
the sum over all input-output paths of the product of the weights' magnitudes. A weight's
score is `|dR/dw * w|` (its share of the flow). Pruning runs `synflow_iterations` rounds: round
k scores the weights with the mask of round k-1 applied and prunes to the exponential schedule
`1 - (1 - sparsity)^(k/n)`, so a weight whose paths were cut by earlier rounds loses its flow.

Choices for a vision transformer (see docs/criteria.md):

- evaluation mode (no dropout), every parameter of the whole model (norms, biases, position
  embeddings, special tokens included) replaced by its absolute value, floating buffers as
  they are;
- LayerNorm, GELU and softmax attention are kept as the model computes them: there is no
  linearised ViT, and dropping the norms would change the network being pruned. The
  conservation law behind SynFlow holds for positively homogeneous networks only, which a
  ViT is not; the rounds still re-measure the flow after every pruning step;
- float32 (bf16/fp16 models are upcast), switching to float64 for the round and all later
  ones as soon as a score is not finite (deep stacks of positive weights without norms can
  leave the float32 range; a LayerNorm keeps a ViT's activations bounded, and float64 costs
  2-4x on CPUs and far more on most GPUs). Every round's scores are divided by their maximum
  before they are ranked in float32.

The model's own tensors are never written: the absolute values are new tensors that
`torch.func.functional_call` puts in place of the parameters for the forward pass only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..masks import select_masks
from .registry import register_criterion

# The score given to weights pruned by an earlier round: below every kept weight's (>= 0).
PRUNED_SCORE = -1.0


def synflow_sparsities(sparsity: float, iterations: int) -> list[float]:
    """The exponential schedule `1 - (1 - sparsity)^(k/n)`, k = 1..n (the last is `sparsity`)."""
    return [1.0 - (1.0 - sparsity) ** (k / iterations) for k in range(1, iterations + 1)]


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the model's images, from its config (or vision config)."""
    config = model.config
    config = getattr(config, "vision_config", None) or config
    size = getattr(config, "image_size", None)
    if size is None:
        raise ValueError(
            f"SynFlow feeds an all-ones image, but the config of {type(model).__name__} has no "
            "`image_size`; set `model.config.image_size` (an int or (height, width))."
        )
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(getattr(config, "num_channels", 3)), int(height), int(width)


def synflow_round(
    model: nn.Module,
    abs_tensors: Mapping[str, torch.Tensor],
    params: Sequence[str],
    masks: Mapping[str, torch.Tensor] | None,
    ones: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """`|dR/dw * w|` for the weights `params`, pruned weights (mask False) at zero.

    Args:
        model: the model, in evaluation mode.
        abs_tensors: |p| of every parameter and the floating buffers, all in one dtype.
        params: names of the weights to score.
        masks: the current masks (True = kept) of `params`, or None (all kept).
        ones: the all-ones input, batch 1, in that dtype.
    """
    weights = {}
    for name in params:
        w = abs_tensors[name] if masks is None else abs_tensors[name] * masks[name]
        weights[name] = w.detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = functional_call(
            model, {**abs_tensors, **weights}, args=(), kwargs={"pixel_values": ones}, strict=False
        )
        flow = outputs.logits.sum()
        grads = torch.autograd.grad(flow, list(weights.values()), allow_unused=True)
    return {
        name: torch.zeros_like(w) if g is None else (g * w.detach()).abs_()
        for (name, w), g in zip(weights.items(), grads)
    }


def positive_tensors(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """|p| in `dtype` for every parameter, and the floating buffers as they are, in `dtype`."""
    tensors = {name: p.detach().to(dtype).abs() for name, p in model.named_parameters()}
    tensors.update(
        {name: b.detach().to(dtype) for name, b in model.named_buffers() if b.is_floating_point()}
    )
    return tensors


def _rankable(scores: dict[str, torch.Tensor], masks) -> dict[str, torch.Tensor]:
    """Float32 scores in [0, 1] (divided by the maximum), `PRUNED_SCORE` where already pruned."""
    top = max(s.max() for s in scores.values()).item()
    scale = 1.0 / top if top > 0 and top < float("inf") else 1.0
    out = {}
    for name, s in scores.items():
        s = (s * scale).float()
        if masks is not None:
            s.masked_fill_(~masks[name], PRUNED_SCORE)
        out[name] = s
    return out


@register_criterion("synflow", needs_data=False)
def synflow_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    params: dict[str, nn.Parameter],
    config,
) -> dict[str, torch.Tensor]:
    """Scores of the last of `config.synflow_iterations` rounds, with weights pruned by earlier
    rounds at `PRUNED_SCORE`: `select_masks(scores, config.sparsity, ...)` is that round's mask.
    Reads no data."""
    iterations = config.synflow_iterations
    if config.pattern is not None and iterations > 1:
        raise ValueError(
            f"SynFlow's iterative schedule has no N:M form (pattern {config.pattern!r}): pass "
            "`synflow_iterations=1` to score once and select the N:M masks from those scores."
        )
    device = next(iter(params.values())).device
    shape = input_shape(model)
    names = list(params)
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        masks, scores, dtype = None, {}, torch.float32
        tensors = positive_tensors(model, dtype)
        for k, sparsity in enumerate(synflow_sparsities(config.sparsity, iterations), start=1):
            ones = torch.ones(1, *shape, dtype=dtype, device=device)
            raw = synflow_round(model, tensors, names, masks, ones)
            if dtype != torch.float64 and not all(torch.isfinite(r).all() for r in raw.values()):
                dtype = torch.float64  # overflow: this round and the later ones in float64
                tensors = positive_tensors(model, dtype)
                ones = ones.to(dtype)
                raw = synflow_round(model, tensors, names, masks, ones)
            scores = _rankable(raw, masks)
            if k < iterations:
                masks = select_masks(scores, sparsity, config.scope, config.min_density)
    finally:
        for module, mode in was_training.items():
            module.training = mode
    return scores
