"""Keep pruned weights exactly zero while fine-tuning, with any training loop.

One mechanism serves both paths: `MaskEnforcer` (custom PyTorch / accelerate loops) and
`PruningMaskCallback` (a thin `transformers.TrainerCallback` that only delegates to it).

How the masks survive training:

1. **Gradients**: a hook on every masked parameter zeroes the gradient at pruned positions
   during backward, before it is accumulated into `.grad`. Gradient accumulation, the DDP
   all-reduce (which runs after the hook), gradient clipping (the norm is that of the sparse
   network), fp16/bf16 autocast and `torch.compile` all see the masked gradient, so momentum,
   Adam moments and factored statistics never accumulate anything at pruned positions.
2. **After every optimizer step** (a `register_step_post_hook` on the optimizer): the pruned
   weights are multiplied in place by the 0/1 mask, which undoes any update that does not
   depend on the gradient. The optimizer state needs no per-step work: with masked gradients,
   the state of an elementwise optimizer (AdamW `exp_avg` / `exp_avg_sq`, SGD
   `momentum_buffer`, ...) never accumulates anything at pruned positions. State restored from
   elsewhere is zeroed when the enforcer is applied (`apply(optimizer)`, done at train begin).
3. **Verification**: `verify` raises `SparsityViolationError` if a pruned weight (or its
   optimizer state) is not exactly zero. The callback verifies at every checkpoint save and
   at the end of training, and writes the masks (and pruner config) into every checkpoint
   folder, so `resume_from_checkpoint` restores the exact masks.

FSDP2 (`fully_shard`, DTensor parameters): the full masks are cut once into the shards of
their parameters (`hf_afr.sharding.local_mask`). FSDP2 reduce-scatters each gradient into
the parameter's shard and then runs its post-accumulate-grad hooks, so the gradient hook is one
of those and masks the local gradient shard (still before clipping and the optimizer step);
weights and optimizer state are masked on the local shards; `violations` sums the counts of all
ranks (every rank must call it).

Cost: per backward one in-place multiplication of each masked gradient (the weight gradient
of an `nn.Linear` is a fresh buffer that only its parameter receives), per optimizer step one
in-place multiplication of each masked weight. The `(parameter, keep mask)` pairs are built once,
with uint8 masks (1 byte per weight; an in-place `mul_` by them is several times faster than
`masked_fill_` on CPU and as cheap on GPU). The multiplication leaves a NaN/inf at a pruned
position NaN; that only arises from a diverged step and `verify` reports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .checkpoint.formats import MASKS_NAME
from .checkpoint.masks_file import save_masks
from .config import PrunerConfig
from .distributed import check_supported_model, check_supported_training_args, unwrap_model
from .masks import nonzero_where_pruned
from .sharding import is_dtensor, local_mask, local_tensor

logger = logging.get_logger(__name__)


class SparsityViolationError(RuntimeError):
    """A pruned weight (or its optimizer state) is not exactly zero."""


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (or similar wrappers)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class MaskEnforcer:
    """Keeps the pruned entries (mask False) of a model's weights and optimizer state at zero.

    Parameters are looked up by name on the unwrapped model (DDP, DataParallel, DeepSpeed and
    `torch.compile` wrappers are stripped). On an FSDP2 model (`fully_shard`) the full masks
    are sharded like their parameters; FSDP1 and ZeRO-3 are refused.

    Args:
        model (`nn.Module`): the model being trained, wrapped or not.
        masks (`dict[str, Tensor]`): boolean masks (True = kept) keyed by parameter name, as
            `AFRPruner.masks`.

    Example (an accelerate loop):
        ```python
        >>> model, optimizer, loader = accelerator.prepare(pruner.model, optimizer, loader)
        >>> enforcer = enforce_masks(model, pruner.masks, optimizer)
        >>> for batch in loader:
        ...     with accelerator.accumulate(model):
        ...         accelerator.backward(model(**batch).loss)
        ...         optimizer.step()
        ...         optimizer.zero_grad()
        >>> enforcer.verify(optimizer)
        ```
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        check_supported_model(model)
        model = unwrap_model(model)
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ValueError(
                f"Masks name parameters the model does not have: {unknown[:5]}. Masks are keyed "
                "by `model.named_parameters()` names of the unwrapped transformers model."
            )
        self.masks = dict(masks)
        self._keep: list[tuple[str, nn.Parameter, torch.Tensor]] = []
        for name, mask in masks.items():
            p = params[name]
            if tuple(mask.shape) != tuple(p.shape):
                raise ValueError(
                    f"Mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(p.shape)}."
                )
            keep = mask.to(device=local_tensor(p.data).device, dtype=torch.bool).byte()
            self._keep.append((name, p, local_mask(keep, p)))
        self._sharded = any(is_dtensor(p) for _, p, _ in self._keep)
        self._hooks: list = []

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights and, if given, the optimizer state at pruned positions."""
        state = unwrap_optimizer(optimizer).state if optimizer is not None else {}
        for _, p, keep in self._keep:
            local_tensor(p.data).mul_(keep)
            for value in state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    local_tensor(value).mul_(keep)

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> MaskEnforcer:
        """Register the gradient hooks and, if given, the optimizer's post-step hook."""
        self.detach()
        for _, p, keep in self._keep:
            if p.requires_grad and is_dtensor(p):  # FSDP2 calls it on the reduced shard
                self._hooks.append(p.register_post_accumulate_grad_hook(_shard_mask_hook(keep)))
            elif p.requires_grad:
                self._hooks.append(p.register_hook(_gradient_mask_hook(keep)))
        if optimizer is not None:
            optimizer = unwrap_optimizer(optimizer)
            self._hooks.append(optimizer.register_step_post_hook(self._after_step))
        return self

    def detach(self) -> None:
        """Remove every hook registered by `attach`."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for _, p, keep in self._keep:
            local_tensor(p.data).mul_(keep)

    def violations(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Number of nonzero entries at pruned positions, per weight (and optimizer state).

        On an FSDP2 model the counts of all ranks are summed (a collective: call it on every rank).
        """
        state = unwrap_optimizer(optimizer).state if optimizer is not None else {}
        tensors, keeps = {}, {}
        for name, p, keep in self._keep:
            tensors[name], keeps[name] = local_tensor(p.detach()), keep
            for key, value in state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    tensors[f"{name} (optimizer {key})"] = local_tensor(value)
                    keeps[f"{name} (optimizer {key})"] = keep
        counts = nonzero_where_pruned(tensors, keeps)
        if self._sharded and tensors:
            # Every rank holds the same parameters and state names, in the same order.
            import torch.distributed as dist

            totals = torch.tensor([counts.get(name, 0) for name in tensors], dtype=torch.int64)
            dist.all_reduce(totals)
            counts = {name: int(n) for name, n in zip(tensors, totals.tolist()) if n}
        return counts

    def verify(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Raise `SparsityViolationError` if any pruned weight or optimizer state is nonzero."""
        found = self.violations(optimizer)
        if found:
            details = ", ".join(f"{name}: {n}" for name, n in list(found.items())[:5])
            raise SparsityViolationError(
                f"The pruning masks are violated: nonzero values at pruned positions in "
                f"{len(found)} tensors ({details}). Something changed the weights outside the "
                "optimizer step (e.g. loading a dense checkpoint), the masks do not belong to "
                "this model, or the optimizer builds state at pruned positions without a gradient "
                "(`apply(optimizer)` zeroes it)."
            )


def _gradient_mask_hook(keep: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if grad.requires_grad or not grad.is_contiguous():  # double backward, or a shared view
            return grad * keep
        return grad.mul_(keep)  # a fresh weight gradient: in place, no allocation

    return hook


def _shard_mask_hook(keep: torch.Tensor):
    @torch.no_grad()
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            local_tensor(param.grad).mul_(keep)

    return hook


def enforce_masks(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> MaskEnforcer:
    """Apply `masks` to `model` (and `optimizer` state) now and keep them through training.

    Returns the attached `MaskEnforcer`; call `.verify(optimizer)` to check and `.detach()` to
    stop enforcing.
    """
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply(optimizer)
    return enforcer.attach(optimizer)


class PruningMaskCallback(TrainerCallback):
    """Keeps pruned weights exactly zero through `Trainer.train` (delegates to `MaskEnforcer`).

    At train begin it attaches a `MaskEnforcer` to the model and optimizer (after the Trainer
    has restored any checkpoint); at every save it verifies the sparsity (a violation raises
    `SparsityViolationError`) and writes `pruning_masks.safetensors` (and `pruner_config.json`)
    into the checkpoint folder, which then loads with `AFRPruner.from_pretrained`.

    Args:
        masks (`dict[str, Tensor]`): boolean masks (True = kept) keyed by parameter name.
        pruner_config (`PrunerConfig`, *optional*): written beside the masks in checkpoints.

    Example:
        ```python
        >>> trainer = Trainer(model=pruner.model, args=args, train_dataset=train_ds,
        ...                   callbacks=[PruningMaskCallback.from_pruner(pruner)])
        ```
    """

    def __init__(
        self, masks: Mapping[str, torch.Tensor], pruner_config: PrunerConfig | None = None
    ):
        if not masks:
            raise ValueError("PruningMaskCallback needs the pruning masks; got none.")
        self.masks = dict(masks)
        self.pruner_config = pruner_config
        self.enforcer: MaskEnforcer | None = None

    @classmethod
    def from_pruner(cls, pruner) -> PruningMaskCallback:
        """The callback for an `AFRPruner` that has masks."""
        return cls(pruner.masks, pruner.config)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        check_supported_training_args(args)
        if self.enforcer is not None:
            self.enforcer.detach()
        self.enforcer = MaskEnforcer(model, self.masks)
        found = self.enforcer.violations(optimizer)
        if found:
            logger.warning(
                f"Zeroing nonzero values at pruned positions in {len(found)} tensors at the start "
                "of training (weights or optimizer state that did not follow the masks)."
            )
        self.enforcer.apply(optimizer)
        self.enforcer.attach(optimizer)

    def on_save(self, args, state, control, optimizer=None, **kwargs):
        if self.enforcer is not None:
            self.enforcer.verify(optimizer)
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            logger.warning(f"Checkpoint folder {folder} not found; the masks were not saved in it.")
            return
        save_masks(self.masks, os.path.join(folder, MASKS_NAME))
        if self.pruner_config is not None:
            self.pruner_config.save_pretrained(folder)

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        if self.enforcer is not None:
            self.enforcer.verify(optimizer)
            self.enforcer.detach()
