"""`measure_speedup`: a structured model timed against the dense model of its config."""

from __future__ import annotations

import math

import pytest
from helpers import tiny_vit

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.structure.speed import measure_speedup

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_structured_model_is_timed_against_its_dense_shape():
    pruner = AFRPruner(
        tiny_vit(), PrunerConfig(method="magnitude", structure="heads+mlp", sparsity=0.5)
    )
    pruner.prune()
    model = pruner.model.train()
    speed = measure_speedup(model, batch_size=2, rounds=2)
    low, high = speed.speedup_range
    assert math.isfinite(speed.speedup) and 0 < low <= speed.speedup <= high
    assert speed.dense_seconds > 0 and speed.structured_seconds > 0
    assert speed.batch_size == 2 and speed.rounds == 2 and speed.device == "cpu"
    assert model.training  # its mode is restored
    assert f"**{speed.speedup:.2f}x**" in speed.to_markdown()


def test_a_dense_model_or_bad_settings_are_refused():
    with pytest.raises(ValueError, match="structurally pruned"):
        measure_speedup(tiny_vit())
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method="magnitude", structure="mlp", sparsity=0.3))
    pruner.prune()
    with pytest.raises(ValueError, match="positive"):
        measure_speedup(pruner.model, batch_size=0)
