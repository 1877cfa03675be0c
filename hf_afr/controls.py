"""Sanity-check controls of a criterion's masks (Frankle et al., ICLR 2021).

"Pruning neural networks at initialization: why are we missing the mark?" asks whether a
criterion's masks carry information beyond their per-layer densities. Each control changes
the masks in one way:

- `"shuffle"`: every tensor keeps as many weights as the criterion kept in it, at random
  positions (seeded by `config.seed`): does the choice *inside* a tensor matter?
- `"invert"`: the lowest-scored weights are kept instead of the highest (as many as
  without the control): does the ranking matter at all?
- `"magnitude_inside"`: every tensor keeps as many weights as the criterion kept in it, those
  of largest |w|: does the criterion choose better than magnitude at its own densities?

With an N:M `pattern`, "shuffle" permutes every group of M at random and
"magnitude_inside" keeps the N of largest |w| in every group, so the masks stay N:M.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PrunerConfig, check_control
from .masks import prune_lowest, select_masks, select_nm_masks


def controlled_masks(
    scores: dict[str, torch.Tensor], params: dict[str, nn.Parameter], config: PrunerConfig
) -> dict[str, torch.Tensor]:
    """The masks (True = kept) of `scores` under `config`, with `config.control` applied."""
    control = config.control
    check_control(control)  # again: the field may have been changed after validation
    if control == "invert":
        scores = {name: -s.float() for name, s in scores.items()}
    masks = select_masks(
        scores, config.sparsity, config.scope, config.min_density, pattern=config.pattern
    )
    if control == "shuffle":
        return shuffled_masks(masks, config.seed, config.pattern_nm)
    if control == "magnitude_inside":
        return magnitude_masks_like(masks, params, config.pattern_nm)
    return masks


def shuffled_masks(
    masks: dict[str, torch.Tensor], seed: int, pattern: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Each mask's kept entries moved to random positions in its tensor (in each group of M
    along the input dimension with an N:M `pattern`); the same seed gives the same masks on
    any device."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.detach().reshape(-1).cpu()
        if pattern is None:
            flat = flat[torch.randperm(flat.numel(), generator=generator)]
        else:
            groups = flat.view(-1, pattern[1])
            order = torch.rand(groups.shape, generator=generator).argsort(dim=1)
            flat = torch.gather(groups, 1, order).reshape(-1)
        shuffled[name] = flat.view(mask.shape).to(mask.device)
    return shuffled


def magnitude_masks_like(
    masks: dict[str, torch.Tensor],
    params: dict[str, nn.Parameter],
    pattern: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per tensor, as many kept weights as in `masks`, those of largest |w| (ties: the earlier
    position is pruned first); with an N:M `pattern`, the N largest in every group."""
    magnitudes = {name: params[name].detach().float().abs() for name in masks}
    if pattern is not None:
        return select_nm_masks(magnitudes, *pattern)
    return {
        name: prune_lowest(magnitudes[name], int((~mask).sum())).to(mask.device)
        for name, mask in masks.items()
    }
