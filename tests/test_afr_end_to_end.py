"""AFR where users meet it: `AFRPruner` with the default config (method "afr", 90% global) keeps
the top weights of z(ReFer) + z(SNIP), z-scored here in float64 by a second implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import AFRPruner, PrunerConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def scores_of(method: str, model, batches) -> dict[str, np.ndarray]:
    scores = AFRPruner(model, PrunerConfig(method=method)).compute_scores(batches, False)
    return {name: s.double().numpy() for name, s in scores.items()}


def top_k_masks(
    scores: dict[str, np.ndarray], keep: int, gap: float = 0.0
) -> dict[str, np.ndarray]:
    names = list(scores)
    flat = np.concatenate([scores[n].ravel() for n in names])
    order = np.argsort(-flat, kind="stable")
    kept = np.zeros(flat.size, dtype=bool)
    kept[order[:keep]] = True
    # The boundary is clear: float32 rounding cannot swap the last kept and first pruned.
    assert flat[order[keep - 1]] - flat[order[keep]] >= gap
    masks, start = {}, 0
    for name in names:
        size = scores[name].size
        masks[name] = kept[start : start + size].reshape(scores[name].shape)
        start += size
    return masks


def z(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = np.concatenate([s.ravel() for s in scores.values()])
    mean, std = flat.mean(), flat.std()  # population std, over all scored weights together
    return {name: (s - mean) / std for name, s in scores.items()}


def test_default_method_keeps_the_top_of_z_refer_plus_z_snip():
    batches = tiny_batches(n_batches=2, batch_size=4)
    model = tiny_vit(seed=3)
    snip, refer = scores_of("snip", model, batches), scores_of("refer", model, batches)

    pruner = AFRPruner(model)  # the default config: what a user gets
    assert (pruner.config.method, pruner.config.scope) == ("afr", "global")
    masks = {name: m.numpy() for name, m in pruner.prune(batches, show_progress=False).items()}

    n = sum(s.size for s in snip.values())
    keep = n - round(0.9 * n)
    z_snip, z_refer = z(snip), z(refer)
    afr = {name: z_refer[name] + z_snip[name] for name in snip}
    expected = top_k_masks(afr, keep, gap=1e-5)
    assert masks.keys() == expected.keys()
    for name in masks:
        assert np.array_equal(masks[name], expected[name]), name
    # AFR is neither of its parts: its masks differ from SNIP's and from ReFer's.
    for parts in (snip, refer):
        other = top_k_masks(parts, keep)
        differing = sum(int((masks[name] != other[name]).sum()) for name in masks)
        assert differing > 0.05 * keep
    assert all(torch.count_nonzero(pruner.params[n][~pruner.masks[n]]) == 0 for n in masks)
