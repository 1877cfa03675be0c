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

import torch
from safetensors.torch import save_file
from transformers import AutoConfig

from ..architectures import get_architecture
from ..config import PrunerConfig
from ..files import atomic_write_text, contained_file, staged_directory
from ..report import SparsityReport
from ..untrusted import CheckpointError
from .card import create_model_card, save_model_card
from .card_data import PrunedCardData
from .compact import COMPACT_QUANT_METHOD, read_compact_header, read_compact_weights
from .entries import CompactEntry, model_tensors
from .formats import (
    COMPACT_WEIGHTS_NAME,
    CONFIG_NAME,
    DENSE_WEIGHTS_NAME,
    IMAGE_PROCESSOR_NAME,
    MASKS_NAME,
    MODEL_CARD_NAME,
    PRUNER_CONFIG_NAME,
    check_one_format,
    other_format_files,
    read_config_file,
)
from .load import check_weights_follow_masks, load_classifier, quiet_transformers
from .masks_file import load_masks, save_masks
from .portable import write_portable_files
from .save import save_pruned_checkpoint
from .widths import apply_config_widths, config_widths


def densify_checkpoint(
    source_directory: str | os.PathLike, save_directory: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Convert a compact checkpoint folder into a dense one, file by file.

    Writes `model.safetensors` (standard, loads without hf_afr), `pruning_masks.safetensors`,
    `config.json` without the compact loading guard, the other files of the source (pruning
    config, image processor, plot) and the README.md with its format section updated. Every
    file is read and checked first (the pruned tensors against the model `config.json`
    describes, built without memory on the meta device); the output is staged and moved into
    place only when complete.

    Returns:
        `dict[str, CompactEntry]`: the pruned tensors of the source, keyed by disk key.

    Raises:
        CheckpointError: (a `ValueError`) naming the file and field of a malformed source.
    """
    source_directory = os.fspath(source_directory)
    config_path = contained_file(source_directory, CONFIG_NAME)
    weights_path = contained_file(source_directory, COMPACT_WEIGHTS_NAME)
    if weights_path is None or config_path is None:
        raise ValueError(
            f"{source_directory} is not a compact checkpoint: it needs {CONFIG_NAME} and "
            f"{COMPACT_WEIGHTS_NAME}."
        )
    check_one_format(source_directory)
    config = read_config_file(config_path)
    quantization = config.pop("quantization_config", None)
    if (
        not isinstance(quantization, dict)
        or quantization.get("quant_method") != COMPACT_QUANT_METHOD
    ):
        raise CheckpointError(
            config_path, "quantization_config", "does not declare an hf_afr compact checkpoint."
        )
    config.pop("transformers_weights", None)
    pruner_config_path = contained_file(source_directory, PRUNER_CONFIG_NAME)
    pruner_config = None
    if pruner_config_path is not None:
        pruner_config = PrunerConfig.from_pretrained(pruner_config_path)
    expected = _model_tensors_from_config(source_directory, config_path)
    state, masks, entries = read_compact_weights(weights_path, True, expected, strict=True)
    others = _other_files(source_directory, skip={CONFIG_NAME, COMPACT_WEIGHTS_NAME})
    with staged_directory(save_directory, stale=(COMPACT_WEIGHTS_NAME,)) as staging:
        _copy_files(others, staging)
        save_file(state, os.path.join(staging, DENSE_WEIGHTS_NAME), metadata={"format": "pt"})
        save_masks(masks, os.path.join(staging, MASKS_NAME))
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        atomic_write_text(os.path.join(staging, CONFIG_NAME), text)
        if config_widths(config) is not None:  # structured: loads narrow, with or without hf_afr
            with quiet_transformers():
                write_portable_files(staging, AutoConfig.from_pretrained(staging))
        if pruner_config is not None:
            report = SparsityReport.from_masks(masks)
            card = create_model_card(
                pruner_config,
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

    Every file of the source is read and checked first (the masks against the loaded model);
    the output is staged and moved into place only when complete.

    Returns:
        `dict[str, CompactEntry]`: the pruned tensors written, keyed by disk key.

    Raises:
        CheckpointError: (a `ValueError`) naming the file and field of a malformed source.
    """
    source_directory = os.fspath(source_directory)
    if os.path.isfile(os.path.join(source_directory, COMPACT_WEIGHTS_NAME)):
        raise ValueError(
            f"{source_directory} is already a compact checkpoint ({COMPACT_WEIGHTS_NAME}); "
            "nothing to do (`hf-afr densify` turns it back into a dense one)."
        )
    masks_file = contained_file(source_directory, MASKS_NAME)
    config_file = contained_file(source_directory, PRUNER_CONFIG_NAME)
    if masks_file is None or config_file is None:
        raise ValueError(
            f"{source_directory} has no {MASKS_NAME} or {PRUNER_CONFIG_NAME}: only checkpoints "
            "pruned and saved by hf_afr (AFRPruner.save_pretrained) can be made compact."
        )
    check_one_format(source_directory)
    pruner_config = PrunerConfig.from_pretrained(config_file)
    model = load_classifier(source_directory)
    masks = load_masks(masks_file, model)
    check_weights_follow_masks(model, masks, source_directory)
    # The processor, plot and card come along (the card is then updated, not replaced).
    skip = {CONFIG_NAME, MASKS_NAME, PRUNER_CONFIG_NAME, COMPACT_WEIGHTS_NAME}
    others = _other_files(source_directory, skip, skip_weights=True)
    save_directory = os.fspath(save_directory)
    name = os.path.basename(os.path.abspath(save_directory))
    with staged_directory(save_directory, stale=other_format_files("compact")) as staging:
        _copy_files(others, staging)
        save_pruned_checkpoint(
            staging,
            model,
            masks,
            pruner_config,
            checkpoint_format="compact",
            card_data=PrunedCardData(model_name=name, repo_id=save_directory),
        )
        entries = read_compact_header(os.path.join(staging, COMPACT_WEIGHTS_NAME))
    return entries


def _model_tensors_from_config(folder: str, config_path: str) -> dict:
    """`model_tensors` of the model `config.json` describes, built on the meta device."""

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder)
        arch = get_architecture(config)
        with torch.device("meta"):
            model = arch.model_cls(config)
            apply_config_widths(model)  # a structured model: its per-layer widths
    except Exception as err:  # noqa: BLE001 - any failure is a config that cannot be built
        raise CheckpointError(
            config_path, None, f"does not describe a model hf_afr can build ({err})."
        ) from None
    return model_tensors(model)


def _other_files(source: str, skip: set[str], skip_weights: bool = False) -> list[str]:
    """The other files of a checkpoint folder to carry over (links out of it refused)."""
    found = []
    for name in sorted(os.listdir(source)):
        is_weights = name.endswith((".safetensors", ".bin", ".safetensors.index.json"))
        if name in skip or name.startswith(".") or (skip_weights and is_weights):
            continue
        if os.path.isdir(os.path.join(source, name)):  # sub-folders (and links to any) stay
            continue
        found.append(contained_file(source, name))
    return found


def _copy_files(paths: list[str], target: str) -> None:
    for path in paths:
        shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
