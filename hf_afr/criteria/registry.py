"""The registry of pruning criteria: name -> score function and what data it reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class ScoringConfig(Protocol):
    """What a criterion may read from the `PrunerConfig` it is given (a `PrunerConfig` is one)."""

    method: str
    sparsity: float
    scope: str
    min_density: float
    pattern: str | None
    feature_token: str
    feature_layers: str
    num_batches: int
    micro_batch_size: int | None
    gradient_checkpointing: bool
    synflow_iterations: int
    seed: int


ScoreFn = Callable[
    [nn.Module, Iterable[Mapping[str, Any]], dict[str, nn.Parameter], ScoringConfig],
    dict[str, torch.Tensor],
]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its score function and what data it reads."""

    name: str
    score: ScoreFn
    needs_data: bool
    needs_labels: bool
    reads_features: bool = False


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(
    name: str, *, needs_data: bool = True, needs_labels: bool = False, reads_features: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator registering a score function under `name`.

    Args:
        name (`str`): the `PrunerConfig.method` that selects it.
        needs_data (`bool`, defaults to `True`): it reads scoring batches.
        needs_labels (`bool`, defaults to `False`): the batches must have `labels`.
        reads_features (`bool`, defaults to `False`): it reads per-sample features, so
            `feature_token` and `feature_layers` matter.
    """

    def decorator(fn: ScoreFn) -> ScoreFn:
        if name in _CRITERIA:
            raise ValueError(f"A pruning criterion named {name!r} is already registered.")
        _CRITERIA[name] = Criterion(name, fn, needs_data, needs_labels, reads_features)
        return fn

    return decorator


def get_criterion(name: str) -> Criterion:
    """The criterion registered under `name`."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(
            f"Unknown pruning method {name!r}. Choose one of: {', '.join(available_criteria())}."
        ) from None


def available_criteria() -> list[str]:
    """Names of all registered criteria."""
    return list(_CRITERIA)


def criteria_help() -> str:
    """One line naming the registered criteria, those that read scoring batches first."""
    with_data = [repr(c.name) for c in _CRITERIA.values() if c.needs_data]
    data_free = [repr(c.name) for c in _CRITERIA.values() if not c.needs_data]
    return (
        f"Pruning criterion: {', '.join(with_data)} (read scoring batches), "
        f"{', '.join(data_free)} (data-free). See docs/criteria.md."
    )
