"""Pruning criteria, registered by name.

A criterion is a function `(model, batches, params, config) -> {parameter name: scores}`
returning one float32 score tensor of the parameter's shape per prunable weight (a higher
score means more important). It changes no weight and leaves the model as it found it.
Adding a criterion means adding one module that calls `register_criterion`.
"""

# Importing the modules registers the built-in criteria.
from . import afr, fisher, grasp, magnitude, random, refer, snip, synflow  # noqa: E402, F401, I001
from .afr import sum_of_z_scores
from .registry import (
    Criterion,
    ScoreFn,
    ScoringConfig,
    available_criteria,
    criteria_help,
    get_criterion,
    register_criterion,
)

__all__ = [
    "Criterion",
    "ScoreFn",
    "ScoringConfig",
    "available_criteria",
    "criteria_help",
    "get_criterion",
    "register_criterion",
    "sum_of_z_scores",
]
