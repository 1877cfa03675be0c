"""Random baseline: uniform scores from a generator seeded with `config.seed`."""

from __future__ import annotations

import torch

from .registry import register_criterion


@register_criterion("random", needs_data=False)
def random_scores(model, batches, params, config) -> dict[str, torch.Tensor]:
    """Seeded uniform scores; the same seed gives the same scores on any device."""
    generator = torch.Generator().manual_seed(config.seed)
    return {
        name: torch.rand(p.shape, generator=generator).to(p.device) for name, p in params.items()
    }
