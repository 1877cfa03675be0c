"""Tiny random ViTs and scoring batches shared by the core tests."""

from __future__ import annotations

import torch
from transformers import ViTConfig, ViTForImageClassification


def tiny_vit(num_labels: int = 3, seed: int = 0, **overrides) -> ViTForImageClassification:
    """A 2-layer, hidden-32 ViT on 32x32 images with deterministic random weights."""
    torch.manual_seed(seed)
    kwargs = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    kwargs.update(overrides)
    return ViTForImageClassification(ViTConfig(**kwargs)).eval()


def tiny_batches(n_batches: int = 2, batch_size: int = 6, num_labels: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
        }
        for _ in range(n_batches)
    ]
