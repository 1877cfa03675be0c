"""Tiny random ViTs and scoring batches shared by the core tests."""

from __future__ import annotations

import torch
from transformers import ViTConfig, ViTForImageClassification

# The tests' ViT shape (every tiny family model is built on it): 2 layers, hidden 32, 2 heads,
# MLP 64, 32x32 images in 8x8 patches.
TINY_VIT = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)


def tiny_vit_config(num_labels: int = 3, **overrides) -> ViTConfig:
    """The `TINY_VIT` config with `num_labels` classes (and any field overridden)."""
    return ViTConfig(**{**TINY_VIT, "num_labels": num_labels, **overrides})


def tiny_vit(num_labels: int = 3, seed: int = 0, **overrides) -> ViTForImageClassification:
    """A `tiny_vit_config` classifier with deterministic random weights, in eval mode."""
    torch.manual_seed(seed)
    return ViTForImageClassification(tiny_vit_config(num_labels, **overrides)).eval()


def tiny_batches(n_batches: int = 2, batch_size: int = 6, num_labels: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
        }
        for _ in range(n_batches)
    ]
