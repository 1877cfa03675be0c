"""A converted or shrunk model is for inference only: training and saving it are refused."""

from __future__ import annotations

import torch
from torch import nn

from .kernels import TRAINING_ERROR

SAVING_ERROR = (
    "This model was converted for inference by hf_afr (to_sparse_inference / shrink); its "
    "layers no longer match its config or the pruning masks, so it cannot be saved. Save the "
    "pruned model before converting it: the checkpoint formats are unchanged, and the "
    "conversion is done again after loading."
)


class InferenceOnlyError(RuntimeError):
    """Raised when a model converted for inference is trained or saved."""


def _refuse_training(module: nn.Module, args) -> None:
    if module.training:
        raise InferenceOnlyError(TRAINING_ERROR)


def _refuse_saving(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    raise InferenceOnlyError(SAVING_ERROR)


def mark_inference_only(model: nn.Module) -> None:
    """Freeze `model` and make a forward pass in training mode, or `state_dict()`, raise."""
    model.eval()
    model.requires_grad_(False)
    if getattr(model, "_hf_afr_inference_only", False):
        return
    model.register_forward_pre_hook(_refuse_training)
    model.register_state_dict_pre_hook(_refuse_saving)
    model._hf_afr_inference_only = True


def is_inference_only(model: nn.Module) -> bool:
    """Whether `model` was converted by `to_sparse_inference` or `shrink`."""
    return bool(getattr(model, "_hf_afr_inference_only", False))


def check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Raise a `ValueError` unless every weight is exactly zero where its mask prunes."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(
                f"The masks name {name!r}, which is not a parameter of this model; pass the "
                "masks saved with this checkpoint (or none: sparsity is read from the weights)."
            )
        weight = params[name].detach()
        if mask.shape != weight.shape:
            raise ValueError(
                f"Mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}."
            )
        if bool(weight[~mask.to(weight.device, torch.bool)].ne(0).any()):
            raise ValueError(
                f"{name} has nonzero weights where its mask prunes; apply the masks first "
                "(hf_afr.apply_masks) or load the checkpoint the masks were saved with."
            )


_SHRUNK_CLASSES: dict[tuple[type, type], type] = {}


def shrunk_class(cls: type, mixin: type) -> type:
    """`Shrunk<cls>`: a subclass of `cls` (isinstance checks still hold) with `mixin` first."""
    if issubclass(cls, mixin):
        return cls
    key = (cls, mixin)
    if key not in _SHRUNK_CLASSES:
        _SHRUNK_CLASSES[key] = type(f"Shrunk{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _SHRUNK_CLASSES[key]
