"""Measured speed of a structurally pruned model against the dense model it was cut from.

The dense side is the same transformers class built from the config without its per-block
widths (random weights: speed depends on the shapes only); both run side by side on the
structured model's device, interleaved round by round (`hf_afr.inference.timing`).
"""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass

import torch
from torch import nn

from ..inference.timing import time_side_by_side
from .report import HEADS_KEY, UNITS_KEY, is_structured


@dataclass(frozen=True)
class StructuredSpeed:
    """Inference speed of a structured model over its dense original (median of per-round ratios)."""

    batch_size: int
    rounds: int
    speedup: float
    speedup_range: tuple[float, float]
    dense_seconds: float
    structured_seconds: float
    device: str
    threads: int

    def to_markdown(self) -> str:
        low, high = self.speedup_range
        return (
            f"Inference at batch {self.batch_size} on {self.device} ({self.threads} threads, "
            f"torch {torch.__version__}, {platform.machine()}): **{self.speedup:.2f}x** the speed "
            f"of the dense model (per-round ratios {low:.2f}-{high:.2f}x over {self.rounds} "
            f"interleaved rounds; {self.dense_seconds * 1e3:.1f} ms dense, "
            f"{self.structured_seconds * 1e3:.1f} ms structured per batch). Measured when the "
            "checkpoint was made; rerun on your hardware with `benchmarks/structured_speed.py`."
        )


@torch.inference_mode()
def measure_speedup(model: nn.Module, batch_size: int = 8, rounds: int = 3) -> StructuredSpeed:
    """Time a structurally pruned model against the dense model of its config, side by side.

    Args:
        model (`nn.Module`): a model pruned with `PrunerConfig(structure=...)`.
        batch_size (`int`, defaults to 8): images per call (random pixels of the model's size).
        rounds (`int`, defaults to 3): interleaved timing rounds.

    Raises:
        `ValueError`: if the model is not structurally pruned.
    """
    if not is_structured(model.config):
        raise ValueError("measure_speedup needs a structurally pruned model (`structure=...`).")
    if batch_size < 1 or rounds < 1:
        raise ValueError(f"batch_size and rounds must be positive, got {batch_size}, {rounds}.")
    config = copy.deepcopy(model.config)
    for key in (HEADS_KEY, UNITS_KEY):
        delattr(config, key)
    parameter = next(model.parameters())
    dense = type(model)(config).to(parameter.device, parameter.dtype).eval()
    vision = getattr(model.config, "vision_config", model.config)
    size = vision.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    pixels = torch.randn(
        batch_size, getattr(vision, "num_channels", 3), height, width,
        device=parameter.device, dtype=parameter.dtype,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        timings = time_side_by_side(
            {
                "dense": lambda: dense(pixel_values=pixels),
                "structured": lambda: model(pixel_values=pixels),
            },
            baseline="dense",
            rounds=rounds,
            device=parameter.device,
        )
    finally:
        model.train(was_training)
    result = timings["structured"]
    return StructuredSpeed(
        batch_size=batch_size,
        rounds=rounds,
        speedup=result.speedup,
        speedup_range=result.speedup_range,
        dense_seconds=timings["dense"].seconds,
        structured_seconds=result.seconds,
        device=str(parameter.device),
        threads=torch.get_num_threads(),
    )
