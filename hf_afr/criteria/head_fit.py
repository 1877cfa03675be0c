"""Scoring through classification heads fitted on the scoring batches (`PrunerConfig.fit_head`).

A model pruned before fine-tuning usually gets a *new* head for its task, initialised at random.
The loss gradient SNIP and AFR score with flows back through that head: with random weights it
measures how a weight or a group moves random projections of the features, not the task. With
`fit_head`, each scoring batch's loss is instead computed through a head fitted by multinomial
logistic regression (L-BFGS, L2 penalty) on the features the head reads *in the other scoring
batches* (leave one batch out): a head fitted to the batch it scores would fit it too well, and
its loss gradient would then say little (with few images per class, it fits them all). With a
single scoring batch there is nothing to leave out: it is fitted in-sample, with a warning.

The model is not changed: the fitted heads replace the head's output only while scoring, and
fine-tuning starts from the model's own head. Under `torch.distributed` the features of every
process's batches are gathered (in the global batch order of `hf_afr.distributed.shard_batches`),
so every batch is scored through the head a single process would fit for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from ..architectures import get_architecture
from ..config import PrunerConfig
from ..distributed import is_distributed
from ..sharding import is_dtensor
from .gradients import prepare_batch

logger = logging.get_logger(__name__)

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
def batch_features(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(features the classification head reads, labels)` of each batch, one row per image."""
    head, features, result = _head(model), [], []
    hook = head.register_forward_pre_hook(lambda module, args: features.append(args[0].float()))
    training = model.training
    model.eval()
    try:
        for raw in batches:
            batch = prepare_batch(raw, model, needs_labels=True)
            features.clear()
            model(pixel_values=batch["pixel_values"])
            (x,) = features
            if x.dim() != 2:
                raise ValueError(
                    f"fit_head needs one feature vector per image at the head's input, got "
                    f"shape {tuple(x.shape)}; set fit_head=False."
                )
            result.append((x, batch["labels"]))
    finally:
        hook.remove()
        model.train(training)
    return result


def _in_global_order(
    local: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[int]]:
    """Every process's batches in global order (rank r's i-th batch is global batch
    `i * world_size + r`, as `shard_batches` deals them) and the global index of each local one."""
    if not is_distributed():
        return local, list(range(len(local)))
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, [(x.cpu(), y.cpu()) for x, y in local])
    device = local[0][0].device if local else torch.device("cpu")
    ordered, index = [], []
    for i in range(max(len(g) for g in gathered)):
        for r in range(world):
            if i < len(gathered[r]):
                if r == rank:
                    index.append(len(ordered))
                x, y = gathered[r][i]
                ordered.append((x.to(device), y.to(device)))
    return ordered, index


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


def leave_one_out_heads(
    model: nn.Module, batches: list[Mapping[str, Any]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of `batches`, the `(weight, bias)` of a head fitted to all the other scoring
    batches (of every process); in-sample, with a warning, if there is only one."""
    every, index = _in_global_order(batch_features(model, batches))
    if not every:
        raise ValueError("fit_head got no scoring batch.")
    num_labels = _head(model).out_features
    if len(every) == 1:
        logger.warning(
            "fit_head with a single scoring batch fits the head to the batch it scores; "
            "use num_batches >= 2 so that each batch is scored through a head fitted to the others."
        )
    heads = []
    for i in index:
        others = [b for j, b in enumerate(every) if j != i] or every
        x, y = (torch.cat(part) for part in zip(*others))
        heads.append(fit_logistic_head(x, y, num_labels))
    return heads


@contextlib.contextmanager
def fitted_head(
    model: nn.Module, batches: Iterable[Mapping[str, Any]]
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """While open, a forward pass of `model` on one of `batches` (or a slice of one) outputs the
    logits of that batch's leave-one-out head (see the module docstring). Yields the batches,
    moved to the model's device and dtype, as a list; a forward pass on any other tensor is an
    error."""
    batches = [prepare_batch(b, model, needs_labels=True) for b in batches]
    for batch in batches:  # each its own storage: how a forward pass is told which batch it is
        batch["pixel_values"] = batch["pixel_values"].clone()
    heads = leave_one_out_heads(model, batches)
    by_storage = {b["pixel_values"].untyped_storage().data_ptr(): h for b, h in zip(batches, heads)}
    current: list[tuple[torch.Tensor, torch.Tensor]] = []

    def choose(module: nn.Module, args: tuple, kwargs: dict) -> None:
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        key = pixel_values.untyped_storage().data_ptr() if pixel_values is not None else None
        if key not in by_storage:
            raise RuntimeError("fit_head: a forward pass on images that are no scoring batch.")
        current[:] = [by_storage[key]]

    def fitted(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not current:
            raise RuntimeError("fit_head: the head ran outside a forward pass of the model.")
        inputs = args[0].full_tensor() if is_dtensor(args[0]) else args[0]
        weight, bias = current[0]
        return F.linear(inputs, weight.to(inputs.dtype), bias.to(inputs.dtype))

    hooks = [
        model.register_forward_pre_hook(choose, with_kwargs=True),
        _head(model).register_forward_hook(fitted),
    ]
    try:
        yield batches
    finally:
        for hook in hooks:
            hook.remove()


def scoring_head(
    model: nn.Module, batches: Iterable[Mapping[str, Any]] | None, config: PrunerConfig
) -> contextlib.AbstractContextManager:
    """`fitted_head(model, batches)` if `config.fits_head`, else a context yielding `batches`."""
    if config.fits_head and batches is not None:
        return fitted_head(model, batches)
    return contextlib.nullcontext(batches)
