"""Gradient accumulation shared by the data-driven criteria (SNIP, ReFer, AFR).

Two objectives are available:

- `"loss"`: the mean cross-entropy of a batch (SNIP).
- `"refer"`: `sum_l F_svd(F^l)` with `F_svd(F) = (1/N) * sum_i sigma_i(F)`, F^l the N x D
  matrix of per-sample features of layer l (ReFer).

Gradients of each objective are summed over the scoring batches. For ReFer that means the
objective is the *sum of per-batch objectives*: `F_svd` is computed on each batch's own
N x D matrix (it is not additive over samples), so the scores depend on the batch size.
Micro-batching (`config.micro_batch_size`) splits a batch without changing that objective:
the features of the whole batch are computed first, `dR/dF` is taken on the full matrix,
and each micro-batch is then back-propagated with its rows of `dR/dF` (exact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_gradient_sums

OBJECTIVES = ("loss", "refer")


@contextlib.contextmanager
def scoring_mode(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Eval mode, gradients only for `params`; restores modes and `requires_grad` afterwards."""
    modes = {module: module.training for module in model.modules()}
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)


def prepare_batch(batch: Any, model: nn.Module, needs_labels: bool) -> dict[str, torch.Tensor]:
    """Validate a scoring batch and move it to the model's device and dtype."""
    if not isinstance(batch, Mapping) or "pixel_values" not in batch:
        keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(
            "Each scoring batch must be a dict with 'pixel_values' (and 'labels' for SNIP/AFR), "
            f"as produced by an image-classification collator; got {keys}."
        )
    pixel_values = torch.as_tensor(batch["pixel_values"])
    if pixel_values.ndim != 4:
        raise ValueError(
            f"'pixel_values' must have shape (batch, channels, height, width), "
            f"got {tuple(pixel_values.shape)}."
        )
    prepared = {"pixel_values": pixel_values.to(device=model.device, dtype=model.dtype)}
    if needs_labels:
        if batch.get("labels") is None:
            raise ValueError(
                "This criterion needs the downstream labels: each scoring batch must have a "
                "'labels' entry (use method='refer', 'magnitude' or 'random' for unlabeled data)."
            )
        labels = torch.as_tensor(batch["labels"]).to(device=model.device, dtype=torch.long)
        num_labels = model.config.num_labels
        if labels.shape != pixel_values.shape[:1] or labels.min() < 0 or labels.max() >= num_labels:
            raise ValueError(
                f"'labels' must hold one class index in [0, {num_labels}) per image; got shape "
                f"{tuple(labels.shape)} with values in [{labels.min().item()}, {labels.max().item()}]. "
                "Pass num_labels/id2label to AFRPruner.from_pretrained to size the head."
            )
        prepared["labels"] = labels
    return prepared


def layer_features(hidden_states: Sequence[torch.Tensor], config) -> list[torch.Tensor]:
    """One N x D float32 feature matrix per selected hidden state."""
    states = hidden_states[1:] if config.feature_layers == "encoder" else hidden_states
    if config.feature_token == "cls":
        return [h[:, 0, :].float() for h in states]
    return [h.float().mean(dim=1) for h in states]


def refer_objective(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_l (1/N) sum_i sigma_i(F^l). `svdvals` has finite gradients for rank-deficient F."""
    return sum(torch.linalg.svdvals(f).sum() / f.shape[0] for f in features)


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], objectives: Sequence[str]):
    outputs = model(pixel_values=batch["pixel_values"], output_hidden_states="refer" in objectives)
    values = {}
    if "loss" in objectives:
        values["loss"] = F.cross_entropy(outputs.logits.float(), batch["labels"])
    return outputs, values


def _micro_batches(
    batch: dict[str, torch.Tensor], size: int | None
) -> list[dict[str, torch.Tensor]]:
    n = batch["pixel_values"].shape[0]
    if size is None or size >= n:
        return [batch]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _refer_feature_grads(model, micro_batches, config) -> list[torch.Tensor]:
    """dR/dF^l for the whole batch, from a gradient-free forward over its micro-batches."""
    with torch.no_grad():
        chunks = [
            layer_features(
                model(pixel_values=mb["pixel_values"], output_hidden_states=True).hidden_states,
                config,
            )
            for mb in micro_batches
        ]
    features = [torch.cat(per_layer).requires_grad_(True) for per_layer in zip(*chunks)]
    with torch.enable_grad():
        return list(torch.autograd.grad(refer_objective(features), features))


def _batch_objectives(model, micro_batch, objectives, config, n_total, feature_grads, offset):
    """The objectives of one micro-batch, scaled so that micro-batches add up to the batch's."""
    outputs, values = _forward(model, micro_batch, objectives)
    n = micro_batch["pixel_values"].shape[0]
    if "loss" in values:
        values["loss"] = values["loss"] * (n / n_total)
    if "refer" in objectives:
        features = layer_features(outputs.hidden_states, config)
        if feature_grads is None:
            values["refer"] = refer_objective(features)
        else:  # surrogate whose gradient equals dR/dw restricted to these rows
            values["refer"] = sum(
                (f * g[offset : offset + n]).sum() for f, g in zip(features, feature_grads)
            )
    return [values[name] for name in objectives]


def accumulate_gradients(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    params: dict[str, nn.Parameter],
    config,
    objectives: Sequence[str],
) -> list[dict[str, torch.Tensor]]:
    """Sum over batches of d(objective)/dw for each objective, as float32 tensors.

    All objectives of a batch come from one shared forward pass (one backward per objective).
    """
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"Unknown objectives {sorted(unknown)}; allowed: {OBJECTIVES}.")
    names = list(params)
    inputs = [params[name] for name in names]
    sums = [
        {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
        for _ in objectives
    ]
    num_batches = 0
    with scoring_mode(model, params):
        for raw_batch in batches:
            batch = prepare_batch(raw_batch, model, needs_labels="loss" in objectives)
            micro_batches = _micro_batches(batch, config.micro_batch_size)
            feature_grads = (
                _refer_feature_grads(model, micro_batches, config)
                if "refer" in objectives and len(micro_batches) > 1
                else None
            )
            n_total, offset = batch["pixel_values"].shape[0], 0
            for mb in micro_batches:
                values = _batch_objectives(
                    model, mb, objectives, config, n_total, feature_grads, offset
                )
                offset += mb["pixel_values"].shape[0]
                for k, value in enumerate(values):
                    grads = torch.autograd.grad(value, inputs, retain_graph=k + 1 < len(values))
                    for name, grad in zip(names, grads):
                        sums[k][name].add_(grad)
            num_batches += 1
    # Several processes: each scored its shard of the batches; sum so all ranks agree.
    num_batches = all_reduce_gradient_sums(sums, num_batches)
    if num_batches == 0:
        raise ValueError(
            "No scoring batches were given: pass an iterable (e.g. a DataLoader) that yields at "
            "least one dict with 'pixel_values' (and 'labels')."
        )
    return sums


def connection_sensitivity(
    grads: dict[str, torch.Tensor], params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """|g * w| in float32, computed in place on the gradient buffers."""
    with torch.no_grad():
        return {name: grads[name].mul_(params[name].detach()).abs_() for name in params}
