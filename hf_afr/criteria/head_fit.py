"""Scoring through a classification head fitted on the scoring batches (`PrunerConfig.fit_head`).

A model pruned before fine-tuning usually gets a *new* head for its task, initialised at random.
The loss gradient SNIP and AFR score with flows back through that head: with random weights it
measures how a weight or a group moves random projections of the features, not the task. With
`fit_head`, the head is first fitted to the scoring batches by multinomial logistic regression
on the features it reads (L-BFGS, L2 penalty), and the scores are computed through the fitted
head. The model is not changed: the fitted head replaces the head's output only while scoring,
and fine-tuning starts from the model's own head. Under `torch.distributed` the features of all
processes are gathered, and rank 0's fit is used everywhere, so every process scores alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..architectures import get_architecture
from ..config import PrunerConfig
from ..distributed import is_distributed
from ..sharding import is_dtensor
from .gradients import prepare_batch

L2_PENALTY = 1e-3
MAX_ITERATIONS = 100


def _head(model: nn.Module) -> nn.Linear:
    name = get_architecture(model).head
    head = model.get_submodule(name)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"fit_head needs a Linear classification head, but {type(model).__name__}.{name} is "
            f"{type(head).__name__}; set fit_head=False."
        )
    return head


@torch.no_grad()
def head_inputs(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the classification head reads on `batches` (one row per image), and the
    labels, gathered from every process under `torch.distributed`."""
    head, features, labels = _head(model), [], []
    hook = head.register_forward_pre_hook(lambda module, args: features.append(args[0].float()))
    training = model.training
    model.eval()
    try:
        for raw in batches:
            batch = prepare_batch(raw, model, needs_labels=True)
            model(pixel_values=batch["pixel_values"])
            labels.append(batch["labels"])
    finally:
        hook.remove()
        model.train(training)
    if not features:
        raise ValueError("fit_head got no scoring batch.")
    x, y = torch.cat(features), torch.cat(labels).to(features[0].device)
    if x.dim() != 2:
        raise ValueError(
            f"fit_head needs one feature vector per image at the head's input, got shape "
            f"{tuple(x.shape)}; set fit_head=False."
        )
    if is_distributed():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (x.cpu(), y.cpu()))
        x = torch.cat([g[0] for g in gathered]).to(x.device)
        y = torch.cat([g[1] for g in gathered]).to(x.device)
    return x, y


def fit_logistic_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    l2: float = L2_PENALTY,
    max_iter: int = MAX_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight `(num_labels, dim)` and bias minimising `mean cross-entropy + l2 * ||weight||^2`
    from zeros (L-BFGS with a strong-Wolfe line search, at most `max_iter` iterations)."""
    weight = features.new_zeros(num_labels, features.shape[1], requires_grad=True)
    bias = features.new_zeros(num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ weight.T + bias
        loss = F.cross_entropy(logits, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@contextlib.contextmanager
def fitted_head(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> Iterator[list[Mapping[str, Any]]]:
    """While open, `model`'s classification head outputs the logits of a head fitted to
    `batches` (see the module docstring); yields the batches as a list (they are read twice)."""
    batches = list(batches)
    head = _head(model)
    features, labels = head_inputs(model, batches)
    weight, bias = fit_logistic_head(features, labels, head.out_features)
    if is_distributed():  # the same head on every rank, whatever the float rounding
        dist.broadcast(weight, src=0)
        dist.broadcast(bias, src=0)

    def fitted(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        inputs = args[0]
        if is_dtensor(inputs):
            inputs = inputs.full_tensor()
        return F.linear(inputs, weight.to(inputs.dtype), bias.to(inputs.dtype))

    hook = head.register_forward_hook(fitted)
    try:
        yield batches
    finally:
        hook.remove()


def scoring_head(
    model: nn.Module, batches: Iterable[Mapping[str, Any]] | None, config: PrunerConfig
) -> contextlib.AbstractContextManager:
    """`fitted_head(model, batches)` if `config.fits_head`, else a context yielding `batches`."""
    if config.fits_head and batches is not None:
        return fitted_head(model, batches)
    return contextlib.nullcontext(batches)
