"""Converting checkpoint folders between the dense and the compact format.

`densify_checkpoint` works at the file level (no model is built, the transformers loader is not
needed); `compact_checkpoint` loads the dense checkpoint with its masks and saves it compact.
Both carry over the other files of the folder (image processor, pruning config) and update the
model card rather than replace it.
"""

from __future__ import annotations

import json
import os
import shutil

from safetensors.torch import save_file

from ..config import PrunerConfig
from ..files import atomic_write_text, read_json_object, resolve_file, staged_directory
from ..report import SparsityReport
from .card import create_model_card, save_model_card
from .compact import COMPACT_QUANT_METHOD, CompactEntry, read_compact_weights
from .formats import (
    COMPACT_WEIGHTS_NAME,
    CONFIG_NAME,
    DENSE_WEIGHTS_NAME,
    IMAGE_PROCESSOR_NAME,
    MASKS_NAME,
    MODEL_CARD_NAME,
    PRUNER_CONFIG_NAME,
)
from .load import check_weights_follow_masks, load_classifier
from .masks_file import load_masks, save_masks
from .save import save_pruned_checkpoint


def densify_checkpoint(
    source_directory: str | os.PathLike, save_directory: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Convert a compact checkpoint folder into a dense one, file by file.

    Writes `model.safetensors` (standard, loads without hf_afr), `pruning_masks.safetensors`,
    `config.json` without the compact loading guard, the other files of the source (pruning
    config, image processor, plot) and the README.md with its format section updated.

    Returns:
        `dict[str, CompactEntry]`: the pruned tensors of the source, keyed by disk key.
    """
    source_directory = os.fspath(source_directory)
    config_path = os.path.join(source_directory, CONFIG_NAME)
    weights_path = os.path.join(source_directory, COMPACT_WEIGHTS_NAME)
    if not os.path.isfile(weights_path) or not os.path.isfile(config_path):
        raise ValueError(
            f"{source_directory} is not a compact checkpoint: it needs {CONFIG_NAME} and "
            f"{COMPACT_WEIGHTS_NAME}."
        )
    config = read_json_object(config_path)
    quantization = config.pop("quantization_config", None) or {}
    if quantization.get("quant_method") != COMPACT_QUANT_METHOD:
        raise ValueError(f"{config_path} does not declare an hf_afr compact checkpoint.")
    config.pop("transformers_weights", None)
    state, masks, entries = read_compact_weights(weights_path)
    with staged_directory(save_directory, stale=(COMPACT_WEIGHTS_NAME,)) as staging:
        _copy_other_files(source_directory, staging, skip={CONFIG_NAME, COMPACT_WEIGHTS_NAME})
        save_file(state, os.path.join(staging, DENSE_WEIGHTS_NAME), metadata={"format": "pt"})
        save_masks(masks, os.path.join(staging, MASKS_NAME))
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(staging, CONFIG_NAME), text)
        pruner_config = resolve_file(source_directory, PRUNER_CONFIG_NAME, missing_ok=True)
        if pruner_config is not None:
            report = SparsityReport.from_masks(masks)
            card = create_model_card(
                PrunerConfig.from_pretrained(pruner_config),
                report,
                checkpoint_format="dense",
                default_name=os.path.basename(os.path.abspath(save_directory)),
                weights_size=os.path.getsize(os.path.join(staging, DENSE_WEIGHTS_NAME)),
                has_image_processor=os.path.isfile(os.path.join(staging, IMAGE_PROCESSOR_NAME)),
            )
            save_model_card(card, staging, report, existing=os.path.join(staging, MODEL_CARD_NAME))
    return entries


def compact_checkpoint(
    source_directory: str | os.PathLike, save_directory: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Convert a dense checkpoint pruned by hf_afr (with its masks) into a compact one.

    Returns:
        `dict[str, CompactEntry]`: the pruned tensors written, keyed by disk key.
    """
    source_directory = os.fspath(source_directory)
    masks_file = os.path.join(source_directory, MASKS_NAME)
    config_file = os.path.join(source_directory, PRUNER_CONFIG_NAME)
    if os.path.isfile(os.path.join(source_directory, COMPACT_WEIGHTS_NAME)):
        raise ValueError(
            f"{source_directory} is already a compact checkpoint ({COMPACT_WEIGHTS_NAME}); "
            "nothing to do (`hf-afr densify` turns it back into a dense one)."
        )
    if not os.path.isfile(masks_file) or not os.path.isfile(config_file):
        raise ValueError(
            f"{source_directory} has no {MASKS_NAME} or {PRUNER_CONFIG_NAME}: only checkpoints "
            "pruned and saved by hf_afr (AFRPruner.save_pretrained) can be made compact."
        )
    masks = load_masks(masks_file)
    model = load_classifier(source_directory)
    check_weights_follow_masks(model, masks, source_directory)
    save_directory = os.fspath(save_directory)
    with staged_directory(save_directory) as staging:
        # The processor, plot and card come along (the card is then updated, not replaced).
        skip = {CONFIG_NAME, MASKS_NAME, PRUNER_CONFIG_NAME, COMPACT_WEIGHTS_NAME}
        _copy_other_files(source_directory, staging, skip, skip_weights=True)
    save_pruned_checkpoint(
        save_directory,
        model,
        masks,
        PrunerConfig.from_pretrained(config_file),
        checkpoint_format="compact",
    )
    return read_compact_weights(os.path.join(save_directory, COMPACT_WEIGHTS_NAME), False)[2]


def _copy_other_files(source: str, target: str, skip: set[str], skip_weights: bool = False) -> None:
    for name in os.listdir(source):
        path = os.path.join(source, name)
        is_weights = name.endswith((".safetensors", ".bin", ".safetensors.index.json"))
        if name in skip or name.startswith(".") or not os.path.isfile(path):
            continue
        if not (skip_weights and is_weights):
            shutil.copyfile(path, os.path.join(target, name))
