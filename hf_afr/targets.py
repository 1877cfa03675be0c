"""Which parameters are prunable: selected by module type and name patterns, never fixed paths."""

from __future__ import annotations

import re

from torch import nn

from .architectures import encoder_blocks, get_architecture, module_names
from .config import PrunerConfig


def _matches(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if name == pattern or name.endswith("." + pattern):
            return True
        try:
            if re.fullmatch(pattern, name):
                return True
        except re.error as err:
            raise ValueError(f"Invalid module pattern {pattern!r}: {err}.") from None
    return False


def _encoder_linear_names(model: nn.Module) -> set[str]:
    return {
        f"{block_name}.{sub_name}"
        for block_name, block in encoder_blocks(model).items()
        for sub_name, sub in block.named_modules()
        if isinstance(sub, nn.Linear)
    }


def _special_module_names(model: nn.Module, config: PrunerConfig) -> set[str]:
    if not (config.prune_patch_embeddings or config.prune_classifier):
        return set()
    arch = get_architecture(model)
    names = set()
    if config.prune_patch_embeddings:
        names.update(module_names(model, arch.patch_embedding, nn.Conv2d))
    head = dict(model.named_modules()).get(arch.head)
    if config.prune_classifier and isinstance(head, nn.Linear):
        names.add(arch.head)
    return names


def find_prunable_parameters(model: nn.Module, config: PrunerConfig) -> dict[str, nn.Parameter]:
    """Return `{parameter name: weight}` for every prunable weight of `model`, in model order.

    Default: the weights of every `nn.Linear` inside the encoder blocks (attention
    query/key/value/output and MLP; for Swin also each stage's patch-merging reduction),
    found structurally (`hf_afr.architectures.encoder_blocks`). `config.target_modules`
    replaces that set, `prune_patch_embeddings` / `prune_classifier` add the family's patch
    embedding / head (`hf_afr.architectures.ARCHITECTURES`), `exclude_modules` removes from
    it. Only `nn.Linear` and `nn.Conv2d` weights qualify: biases, norms, position
    embeddings and the CLS, distillation and register tokens are never pruned.
    """
    if config.target_modules is not None:
        selected = {
            name
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and _matches(name, config.target_modules)
        }
    else:
        selected = _encoder_linear_names(model)
    selected |= _special_module_names(model, config)
    if config.exclude_modules:
        selected = {name for name in selected if not _matches(name, config.exclude_modules)}

    params = {}
    for name, module in model.named_modules():
        if name in selected and isinstance(module, (nn.Linear, nn.Conv2d)):
            params[f"{name}.weight" if name else "weight"] = module.weight
    if not params:
        raise ValueError(
            "No prunable parameters were selected. Check `target_modules` / `exclude_modules`: "
            "they must match names of nn.Linear or nn.Conv2d modules of the model "
            "(see `[n for n, _ in model.named_modules()]`)."
        )
    return params
