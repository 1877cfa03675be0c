"""Helpers shared by the sections: runtime, model shapes, batches, timing rounds, verdicts.

Everything here reaches hf_afr through its public API only (`PrunerConfig`,
`find_prunable_parameters`, `get_criterion`, `DEFAULT_MODEL`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_afr import DEFAULT_MODEL, PrunerConfig, find_prunable_parameters, get_criterion
from hf_afr.inference.timing import compare_rounds, seconds_per_call, time_rounds

METHODS = ("snip", "refer", "afr")
NUM_LABELS = 10

# ViTConfig keyword arguments of the model shapes used by the sections (random weights).
SHAPES: dict[str, dict[str, int]] = {
    # ViT-B/16: the ViTConfig defaults.
    "ViT-B/16": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
    ),
    # ViT-S/16 width at half depth: the timing model (ViT-B/16 costs ~1.4 s per image on 2 cores).
    "ViT-S/16-6L": dict(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
    ),
    # Shape of the embedded default model, used when that model is not shipped.
    "tiny": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=32,
        patch_size=4,
    ),
    # A toy for the unit tests.
    "toy": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    ),
}

TARGETS = {
    "refer/snip": 1.10,
    "afr/snip": 1.70,
    "afr/snip stretch": 1.50,
    "memory": 1.30,
    "mask upkeep": 1.03,
    "compact/bound": 1.10,
}


@dataclasses.dataclass
class Runtime:
    """Device and dtype of a run."""

    device: torch.device
    dtype: torch.dtype

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def shape_kwargs(shape: str | dict) -> dict[str, int]:
    """ViTConfig kwargs of a named shape, or of a dict overriding one (`base`, default ViT-S)."""
    if isinstance(shape, dict):
        base = dict(SHAPES[shape.get("base", "ViT-S/16-6L")])
        base.update({k: v for k, v in shape.items() if k != "base"})
        return base
    return dict(SHAPES[shape])


def build_model(shape: str | dict, rt: Runtime, seed: int = 0) -> ViTForImageClassification:
    """A random-weight ViT classifier of the given shape, or the embedded default model."""
    if shape == "default":
        if (Path(DEFAULT_MODEL) / "config.json").is_file():
            model = ViTForImageClassification.from_pretrained(
                DEFAULT_MODEL, num_labels=NUM_LABELS, ignore_mismatched_sizes=True
            )
            return model.to(rt.device, rt.dtype).eval()
        shape = "tiny"
    torch.manual_seed(seed)
    config = ViTConfig(num_labels=NUM_LABELS, **shape_kwargs(shape))
    return ViTForImageClassification(config).to(rt.device, rt.dtype).eval()


def describe(model: ViTForImageClassification) -> str:
    c = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        f"hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.image_size} px, "
        f"patch {c.patch_size}, {params:.1f}M params"
    )


def describe_shape(shape: str | dict) -> str:
    """`describe` of a shape, from a model built on the meta device (no memory, no init cost)."""
    if shape == "default":
        return "the embedded default model"
    with torch.device("meta"):
        return describe(
            ViTForImageClassification(ViTConfig(num_labels=NUM_LABELS, **shape_kwargs(shape)))
        )


def make_batches(model, n_batches: int, batch_size: int, rt: Runtime, seed: int = 1) -> list:
    """`n_batches` random `{"pixel_values", "labels"}` batches for `model`."""
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator).to(
                rt.device, rt.dtype
            ),
            "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(
                rt.device
            ),
        }
        for _ in range(n_batches)
    ]


def scorer(model, batches, method: str, **config_kwargs) -> Callable[[], dict]:
    """A zero-argument callable running the registered criterion end to end."""
    config = PrunerConfig(method=method, num_batches=len(batches), **config_kwargs)
    params = find_prunable_parameters(model, config)
    criterion = get_criterion(method)
    return lambda: criterion.score(model, batches, params, config)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, rt: Runtime) -> dict:
    """Per-variant times of `rounds` rounds; the order rotates each round. One warm-up call."""
    return time_rounds(fns, rounds, device=rt.device)


def timed(fn: Callable[[], Any], rt: Runtime) -> float:
    """Wall-clock seconds of one call (device work included)."""
    return seconds_per_call(fn, 1, rt.device)


def best_time(fn: Callable[[], Any], repeats: int, rt: Runtime) -> float:
    """Best of `repeats` timed calls, after one warm-up call."""
    fn()
    return min(timed(fn, rt) for _ in range(repeats))


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    """Median, range and ratio of minimums of the per-round ratios num / den."""
    # hf_afr's speed-up of `den` against the baseline `num` is the per-round num / den.
    timing = compare_rounds(times, baseline=num)[den]
    low, high = timing.speedup_range
    return {"median": timing.speedup, "low": low, "high": high, "of_minimums": timing.best_speedup}


def verdict(value: float, target: float) -> str:
    if value <= target:
        return f"met ({value:.2f} <= {target:.2f})"
    return f"missed by {value / target - 1:.1%} ({value:.2f} > {target:.2f})"


def require_finite(values: Iterable[float], what: str) -> None:
    """Raise if a measured value is NaN or infinite (a section must not report garbage)."""
    bad = [v for v in values if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if bad:
        raise RuntimeError(f"{what}: measured non-finite values {bad[:3]}.")


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
