"""Masks hold against optimizers that move weights without a gradient, and Adafactor's factored
second-moment state is the one of the masked gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import PrunerConfig, apply_masks, enforce_masks, find_prunable_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


def pruned_tiny_vit(seed: int = 0):
    """A tiny ViT, 70% randomly pruned, with row 0 of every prunable weight fully pruned."""
    model = tiny_vit(seed=seed).train()
    params = find_prunable_parameters(model, PrunerConfig())
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in params.items():
        mask = torch.rand(p.shape, generator=generator) >= 0.7
        mask[0] = False
        masks[name] = mask
    apply_masks(params, masks)
    return model, masks


class ConstantDrift(torch.optim.Optimizer):
    """Adds `drift` to every parameter at each step, whatever its gradient (like a decoupled
    update that never reads the gradient): only the post-step hook can undo it."""

    def __init__(self, params, drift: float = 0.01):
        super().__init__(params, {"drift": drift})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(group["drift"])


def test_weights_moved_without_a_gradient_stay_zero():
    model, masks = pruned_tiny_vit()
    optimizer = ConstantDrift(model.parameters())
    enforce_masks(model, masks, optimizer)
    params = dict(model.named_parameters())
    for _ in range(2):
        optimizer.step()
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0, name
        kept = params[name].detach()[mask]
        assert torch.count_nonzero(kept) == kept.numel()  # the drift did reach the kept weights


def _step(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_adafactor_factored_state_is_that_of_the_masked_gradients():
    batches = tiny_batches(n_batches=2, batch_size=2)
    model, masks = pruned_tiny_vit()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2, weight_decay=0.1)
    enforce_masks(model, masks, optimizer)
    # Reference, written differently: no hooks, the gradients and weights masked by hand.
    reference, _ = pruned_tiny_vit()
    ref_optimizer = torch.optim.Adafactor(reference.parameters(), lr=1e-2, weight_decay=0.1)
    ref_params = dict(reference.named_parameters())
    for batch in batches:
        _step(model, optimizer, batch)
        reference(**batch).loss.backward()
        with torch.no_grad():
            for name, mask in masks.items():
                ref_params[name].grad[~mask] = 0
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        with torch.no_grad():
            for name, mask in masks.items():
                ref_params[name][~mask] = 0

    params = dict(model.named_parameters())
    checked = 0
    for name, mask in masks.items():
        state, ref_state = optimizer.state[params[name]], ref_optimizer.state[ref_params[name]]
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0, name
        torch.testing.assert_close(params[name].detach(), ref_params[name].detach())
        for key in ("row_var", "col_var"):
            assert state[key].shape != params[name].shape  # factored: not filtered by shape
            torch.testing.assert_close(state[key], ref_state[key], msg=f"{name} {key}")
        # Hand-worked: row 0 is fully pruned, so its gradient row is zero and so is its variance.
        assert torch.count_nonzero(state["row_var"][0]) == 0, name
        assert torch.count_nonzero(state["row_var"][1:]) > 0, name
        checked += 1
    assert checked == len(masks) > 0


@pytest.mark.parametrize("hooked", [True, False])
def test_adafactor_unmasked_reference_differs(hooked):
    """The comparison above can fail: without enforcement the factored state sees the pruned
    positions' gradients (row 0 gets a nonzero variance)."""
    model, masks = pruned_tiny_vit()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    if hooked:
        enforce_masks(model, masks, optimizer)
    _step(model, optimizer, tiny_batches(n_batches=1, batch_size=4)[0])
    params = dict(model.named_parameters())
    name = next(n for n in masks if "fc1" in n)
    assert bool(torch.count_nonzero(optimizer.state[params[name]]["row_var"][0])) is not hooked
