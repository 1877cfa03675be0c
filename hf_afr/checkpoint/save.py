"""Saving a pruned model into a folder.

`save_pruned_checkpoint` is the one save of hf_afr: `AFRPruner.save_pretrained`, `push_to_hub`
and the scripts all call it. Every file is written to a staging folder and moved into place,
weights before `config.json`, so an interrupted save leaves the folder as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..config import PrunerConfig
from ..files import staged_directory
from ..structure.report import is_structured, structure_card_section, structure_report
from .card import create_model_card, save_model_card
from .compact import save_compact_checkpoint
from .formats import (
    COMPACT_WEIGHTS_NAME,
    DENSE_WEIGHTS_NAME,
    IMAGE_PROCESSOR_NAME,
    MASKS_NAME,
    MODEL_CARD_NAME,
    check_format,
    other_format_files,
)
from .load import quiet_transformers
from .masks_file import save_masks


def save_pruned_checkpoint(
    save_directory: str | os.PathLike,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    pruner_config: PrunerConfig,
    *,
    checkpoint_format: str = "dense",
    image_processor: Any | None = None,
    model_card: bool = True,
    card_kwargs: Mapping[str, Any] | None = None,
    **save_kwargs: Any,
) -> str:
    """Write model, pruning config, masks, image processor and model card into a folder.

    Args:
        save_directory (`str` or `os.PathLike`): the folder (created if needed).
        model (`nn.Module`): the pruned transformers model.
        masks (`dict[str, Tensor]`): boolean masks (True = kept); may be empty before pruning.
        pruner_config (`PrunerConfig`): written as `pruner_config.json`.
        checkpoint_format (`str`, defaults to `"dense"`): `"dense"` or `"compact"`.
        image_processor (*optional*): saved alongside, so that `pipeline(...)` works on the folder.
        model_card (`bool`, defaults to `True`): write README.md and the density plot (when
            there are masks); an existing README.md is updated, not replaced.
        card_kwargs (`dict`, *optional*): passed to `create_model_card`.
        save_kwargs: passed to `model.save_pretrained` (dense format only).

    Returns:
        `str`: the path of the weights file.
    """
    check_format(checkpoint_format)
    if save_kwargs.get("push_to_hub"):
        raise ValueError("Use `AFRPruner.push_to_hub(repo_id, ...)` to upload a pruned model.")
    if checkpoint_format == "compact" and save_kwargs:
        raise ValueError(
            f"Options {sorted(save_kwargs)} only apply to the dense checkpoint format."
        )
    if checkpoint_format == "compact" and not masks:
        raise ValueError("A compact checkpoint stores the masks: call `prune(batches)` first.")
    save_directory = os.fspath(save_directory)
    had_processor = os.path.isfile(os.path.join(save_directory, IMAGE_PROCESSOR_NAME))
    with staged_directory(save_directory, stale=other_format_files(checkpoint_format)) as staging:
        if checkpoint_format == "compact":
            save_compact_checkpoint(model, masks, staging)
            weights = COMPACT_WEIGHTS_NAME
        else:
            with quiet_transformers():  # no progress bar for a few files
                model.save_pretrained(staging, **save_kwargs)
            if masks:
                save_masks(masks, os.path.join(staging, MASKS_NAME))
            weights = DENSE_WEIGHTS_NAME
        pruner_config.save_pretrained(staging)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
        structured = is_structured(model.config)
        if model_card and (masks or structured):
            kwargs = dict(card_kwargs or {})
            if structured:
                report = structure_report(model.config)
                kwargs["structure"] = structure_card_section(report, pruner_config.structure)
            if not kwargs.get("repo_id"):
                kwargs.setdefault("model_name", os.path.basename(os.path.abspath(save_directory)))
            if os.path.isfile(os.path.join(staging, weights)):
                kwargs.setdefault("weights_size", os.path.getsize(os.path.join(staging, weights)))
            kwargs.setdefault("has_image_processor", image_processor is not None or had_processor)
            kwargs["tags"] = [model.config.model_type, *(kwargs.get("tags") or [])]
            card = create_model_card(
                pruner_config, masks, checkpoint_format=checkpoint_format, **kwargs
            )
            existing = os.path.join(save_directory, MODEL_CARD_NAME)
            save_model_card(card, staging, masks, existing=existing)
    return os.path.join(save_directory, weights)
