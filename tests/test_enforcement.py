"""`MaskEnforcer` / `enforce_masks` / `PruningMaskCallback`: pruned weights stay exactly zero."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_vit_config
from transformers import ViTForImageClassification

from hf_afr import PrunerConfig, apply_masks, find_prunable_parameters
from hf_afr.checkpoint.masks_file import MASKS_NAME, load_masks
from hf_afr.enforcement import (
    MaskEnforcer,
    PruningMaskCallback,
    SparsityViolationError,
    enforce_masks,
)


def pruned_model(sparsity: float = 0.8, seed: int = 0):
    """A tiny ViT whose prunable weights are randomly pruned, and its masks."""
    torch.manual_seed(seed)
    model = ViTForImageClassification(tiny_vit_config(patch_size=4))
    params = find_prunable_parameters(model, PrunerConfig())
    generator = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(p.shape, generator=generator) >= sparsity for n, p in params.items()}
    apply_masks(params, masks)
    return model, masks


def batch(seed: int, size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(size, 3, 32, 32, generator=generator),
        "labels": torch.randint(0, 3, (size,), generator=generator),
    }


def train(model, optimizer, steps: int = 3, accumulation: int = 1, clip: float | None = None):
    model.train()
    for step in range(steps):
        for micro in range(accumulation):
            loss = model(**batch(10 * step + micro)).loss / accumulation
            loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()


def pruned_nonzeros(model, masks) -> int:
    params = dict(model.named_parameters())
    return sum(int(torch.count_nonzero(params[n].detach()[~m])) for n, m in masks.items())


def state_nonzeros(model, optimizer, masks) -> int:
    params = dict(model.named_parameters())
    total = 0
    for name, mask in masks.items():
        for value in optimizer.state[params[name]].values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                total += int(torch.count_nonzero(value[~mask]))
    return total


OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adamw_amsgrad_foreach": lambda ps: torch.optim.AdamW(
        ps, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=True
    ),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, weight_decay=0.1),
    "sgd_nesterov": lambda ps: torch.optim.SGD(
        ps, lr=1e-1, momentum=0.9, nesterov=True, weight_decay=0.1
    ),
    "adafactor": lambda ps: torch.optim.Adafactor(ps, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_revive_without_enforcement(name):
    model, masks = pruned_model()
    optimizer = OPTIMIZERS[name](model.parameters())
    train(model, optimizer)
    assert pruned_nonzeros(model, masks) > 0  # so the enforcement test below can fail


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_enforcement_keeps_weights_and_state_zero(name):
    model, masks = pruned_model()
    optimizer = OPTIMIZERS[name](model.parameters())
    enforcer = enforce_masks(model, masks, optimizer)
    train(model, optimizer, accumulation=2, clip=0.5)
    assert pruned_nonzeros(model, masks) == 0
    assert state_nonzeros(model, optimizer, masks) == 0
    enforcer.verify(optimizer)
    kept = dict(model.named_parameters())
    assert all(torch.count_nonzero(kept[n].detach()[m]) > 0 for n, m in masks.items())


def test_gradients_are_masked_before_clipping():
    model, masks = pruned_model()
    enforcer = MaskEnforcer(model, masks).attach()
    model(**batch(0)).loss.backward()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        assert torch.count_nonzero(grad[~mask]) == 0 and torch.count_nonzero(grad[mask]) > 0
    # The clipping norm is the sparse network's: no pruned gradient enters it.
    reference, _ = pruned_model()
    reference(**batch(0)).loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, mask in masks.items():
        ref_params[name].grad.masked_fill_(~mask, 0)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9))
    enforcer.detach()
    model.zero_grad()
    model(**batch(0)).loss.backward()
    assert any(torch.count_nonzero(params[n].grad[~m]) for n, m in masks.items())


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_gradient_hooks_support_double_backward():
    """A gradient penalty through the masked gradient matches masking by hand."""
    name = None
    grads = []
    for hooked in (True, False):
        model, masks = pruned_model()
        model.set_attn_implementation("eager")  # SDPA on CPU has no double backward
        name = name or next(iter(masks))
        weight, keep = dict(model.named_parameters())[name], masks[name]
        loss = model(**batch(0)).loss
        if hooked:
            MaskEnforcer(model, masks).attach()
            loss.backward(create_graph=True)
            weight.grad.square().sum().backward()  # accumulates the penalty's gradient
            grads.append(weight.grad.detach().clone())
        else:
            first = torch.autograd.grad(loss, weight, create_graph=True)[0] * keep
            (penalty,) = torch.autograd.grad(first.square().sum(), weight)
            grads.append(first.detach() + penalty * keep)
    assert torch.count_nonzero(grads[0][~masks[name]]) == 0
    assert torch.count_nonzero(grads[0]) > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_apply_cleans_restored_optimizer_state():
    model, masks = pruned_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train(model, optimizer, steps=1)  # unmasked training leaves state at pruned positions
    enforcer = MaskEnforcer(model, masks)
    assert enforcer.violations(optimizer)
    enforcer.apply(optimizer)
    assert enforcer.violations(optimizer) == {}
    assert pruned_nonzeros(model, masks) == state_nonzeros(model, optimizer, masks) == 0


def test_verify_names_the_violated_tensor():
    model, masks = pruned_model()
    enforcer = MaskEnforcer(model, masks)
    enforcer.verify()
    name = next(iter(masks))
    position = (~masks[name]).nonzero()[0].tolist()
    with torch.no_grad():
        dict(model.named_parameters())[name][tuple(position)] = 0.5
    with pytest.raises(SparsityViolationError, match=name.replace(".", r"\.")):
        enforcer.verify()


def test_masks_must_match_the_model():
    model, masks = pruned_model()
    with pytest.raises(ValueError, match="parameters the model does not have"):
        MaskEnforcer(model, {"vit.no_such.weight": next(iter(masks.values()))})
    name = next(iter(masks))
    with pytest.raises(ValueError, match="has shape"):
        MaskEnforcer(model, {name: masks[name][:1]})


def test_accelerate_loop_bf16_accumulation_and_clipping():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    model, masks = pruned_model()
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        model, optimizer = accelerator.prepare(model, optimizer)
        enforcer = enforce_masks(model, masks, optimizer)
        model.train()
        for i in range(6):
            with accelerator.accumulate(model):
                accelerator.backward(model(**batch(i)).loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
        enforcer.verify(optimizer)
        inner = optimizer.optimizer
        assert len(inner.state) > 0 and state_nonzeros(model, inner, masks) == 0
        assert pruned_nonzeros(model, masks) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_torch_compile():
    model, masks = pruned_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    compiled = torch.compile(model, backend="aot_eager")
    enforce_masks(compiled, masks, optimizer)
    compiled(**batch(0)).loss.backward()  # the gradient hooks run under the compiled backward
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[n].grad[~m]) == 0 for n, m in masks.items())
    optimizer.step()
    assert pruned_nonzeros(model, masks) == state_nonzeros(model, optimizer, masks) == 0


def callback_args(tmp_path, should_save=True):
    return SimpleNamespace(output_dir=str(tmp_path), should_save=should_save, fsdp=None)


def test_callback_saves_masks_in_checkpoints_and_checks_sparsity(tmp_path):
    model, masks = pruned_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1, momentum=0.9)
    config = PrunerConfig(method="snip", sparsity=0.8)
    callback = PruningMaskCallback(masks, config)
    args, state = callback_args(tmp_path), SimpleNamespace(global_step=3)
    callback.on_train_begin(args, state, None, model=model, optimizer=optimizer)
    train(model, optimizer, steps=2)

    (tmp_path / "checkpoint-3").mkdir()
    callback.on_save(args, state, None, model=model, optimizer=optimizer)
    saved = load_masks(tmp_path / "checkpoint-3" / MASKS_NAME)
    assert all(torch.equal(saved[n], masks[n]) for n in masks)
    assert PrunerConfig.from_pretrained(tmp_path / "checkpoint-3") == config

    optimizer.state[dict(model.named_parameters())[next(iter(masks))]]["momentum_buffer"] += 1
    with pytest.raises(SparsityViolationError, match="momentum_buffer"):
        callback.on_save(args, state, None, model=model, optimizer=optimizer)
    callback.on_train_end(args, state, None, model=model)
    assert callback.enforcer._hooks == []


def test_callback_refuses_fsdp1(tmp_path):
    model, masks = pruned_model()
    args = SimpleNamespace(
        output_dir=str(tmp_path), should_save=True, fsdp="full_shard", fsdp_config={"version": 1}
    )
    with pytest.raises(ValueError, match="FSDP1 is enabled"):
        PruningMaskCallback(masks).on_train_begin(args, None, None, model=model, optimizer=None)
