"""Resuming a fine-tuning run: the checkpoint to resume, and the pruner the run goes on with.

A checkpoint resumes with what made its model, never scored again: the masks written by
`PruningMaskCallback` (individual weights), the per-layer widths its `config.json` records (a
structurally pruned model; `PrunerConfigCallback` writes its `pruner_config.json`), or both
(individual weights pruned inside a structurally pruned model). It must belong to the run: the
family, dense shapes and labels of `--model_name_or_path` and the training data, and widths the
run's arguments can give.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

from transformers import AutoConfig, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..checkpoint.formats import CONFIG_NAME, MASKS_NAME, PRUNER_CONFIG_NAME, read_config_file
from ..checkpoint.load import check_local_checkpoint, quiet_transformers
from ..checkpoint.masks_file import load_masks
from ..checkpoint.structured_loader import narrow_to_config
from ..checkpoint.widths import config_widths, model_widths
from ..config import PrunerConfig
from ..enforcement import PruningMaskCallback
from ..files import contained_file
from ..pruner import AFRPruner
from ..resume import PrunerConfigCallback
from ..structure.report import is_structured, meta_model
from ..untrusted import CheckpointError

logger = logging.get_logger("hf_afr.scripts")


def resolve_resume_checkpoint(checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from (`"last"`/`"true"`: the newest in `output_dir`).

    It must hold the masks written by `PruningMaskCallback` or record the per-layer widths of a
    structurally pruned model in its `config.json`; checked before any work.
    """
    if checkpoint is None:
        return None
    if str(checkpoint).lower() in ("true", "last"):
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise ValueError(f"No checkpoint to resume from in {output_dir}.")
        checkpoint = found
    if not os.path.isdir(checkpoint):
        raise ValueError(f"--resume_from_checkpoint {checkpoint!r} is not a folder.")
    if not os.path.isfile(os.path.join(checkpoint, MASKS_NAME)) and not _records_widths(checkpoint):
        raise ValueError(
            f"Checkpoint {checkpoint} has no {MASKS_NAME}: only checkpoints written with "
            "hf_afr's PruningMaskCallback, or of a structurally pruned model (per-layer widths "
            "in config.json), can be resumed with their exact pruning."
        )
    return checkpoint


def _records_widths(checkpoint: str) -> bool:
    path = contained_file(checkpoint, CONFIG_NAME)
    try:
        return path is not None and config_widths(read_config_file(path)) is not None
    except CheckpointError:
        raise
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from None


def resume_pruner(
    base: AFRPruner, run_config: PrunerConfig, checkpoint: str, model_name: str
) -> AFRPruner:
    """The pruner a resumed run goes on with: the checkpoint's pruning, not scored again.

    A structurally pruned checkpoint gives the model its widths (and masks, if it has them), read
    with `AFRPruner.from_pretrained`; otherwise the masks are installed in `base.model`. The
    weights, optimizer, scheduler and step are then restored by the Trainer.

    Args:
        base (`AFRPruner`): `--model_name_or_path`, loaded with the run's labels.
        run_config (`PrunerConfig`): the pruning the run's arguments give (the saved one of an
            already pruned `--model_name_or_path`).
        checkpoint (`str`): the folder from `resolve_resume_checkpoint`.
        model_name (`str`): `--model_name_or_path`, named in the errors.

    Raises:
        `ValueError`: one line, if the checkpoint is of another model, other labels, or other
            widths than the run's arguments give.
    """
    check_local_checkpoint(checkpoint)
    with quiet_transformers():
        config = AutoConfig.from_pretrained(checkpoint)
    check_resumable(checkpoint, config, base.model.config, run_config.structure, model_name)
    has_masks = os.path.isfile(os.path.join(checkpoint, MASKS_NAME))
    saved = None
    if has_masks or os.path.isfile(os.path.join(checkpoint, PRUNER_CONFIG_NAME)):
        saved = PrunerConfig.from_pretrained(checkpoint)
    if is_structured(config):  # the widths, the fine-tuned weights and any masks
        skeleton = meta_model(config, widths=False)
        skeleton.config = config  # narrowed to its widths, checked against the weights files
        narrow_to_config(skeleton, sorted(glob.glob(os.path.join(checkpoint, "*.safetensors"))))
        resumed = AFRPruner.from_pretrained(checkpoint, saved or run_config)
    else:
        resumed = AFRPruner(base.model, saved)
        resumed.set_masks(load_masks(os.path.join(checkpoint, MASKS_NAME), base.model))
    resumed.base_model, resumed.image_processor = base.base_model, base.image_processor
    kept = " and ".join(
        what
        for what, has in (("per-layer widths", is_structured(config)), ("masks", has_masks))
        if has
    )
    logger.info(f"Resuming from {checkpoint}: reusing its {kept}.")
    if saved is not None and saved != run_config:
        logger.warning(
            f"Resuming from {checkpoint}, pruned with {_describe(saved, run_config)}; the pruning "
            f"arguments of this run ({_describe(run_config, saved)}) are ignored."
        )
    return resumed


def check_resumable(
    checkpoint: str, config: Any, run_model_config: Any, structure: str | None, model_name: str
) -> None:
    """Check that a checkpoint's model config belongs to the run about to resume from it.

    Args:
        checkpoint (`str`): the checkpoint folder, named in the errors.
        config: the checkpoint's model config.
        run_model_config: the config of the run's model (`--model_name_or_path` with the
            training data's labels), dense or structurally pruned.
        structure (`str`, *optional*): the run's `--structure` (None: individual weights).
        model_name (`str`): `--model_name_or_path`, named in the errors.

    Raises:
        `ValueError`: one line naming what differs (family, a shape, the labels or the widths).
    """
    start = f"Cannot resume from {checkpoint}:"
    other_model = "resume with the --model_name_or_path of the run that wrote it"
    labels, run_labels = _labels(config), _labels(run_model_config)
    if labels != run_labels:
        raise ValueError(
            f"{start} it classifies {len(labels)} labels ({_first(labels)}), the training data "
            f"has {len(run_labels)} ({_first(run_labels)}); resume with the data of the run that "
            "wrote it."
        )
    if config.model_type != run_model_config.model_type:
        raise ValueError(
            f"{start} it holds a {config.model_type!r} model, but {model_name} is a "
            f"{run_model_config.model_type!r} model; {other_model}."
        )
    dense, run_dense = meta_model(config, widths=False), meta_model(run_model_config, widths=False)
    shapes, run_shapes = _shapes(dense), _shapes(run_dense)
    for name in sorted(shapes.keys() | run_shapes.keys()):
        if shapes.get(name) != run_shapes.get(name):
            raise ValueError(
                f"{start} it holds another model than {model_name} ({name}: "
                f"{_shape(shapes.get(name))} there, {_shape(run_shapes.get(name))} here); "
                f"{other_model}."
            )
    widths, run_widths = config_widths(config), config_widths(run_model_config)
    if run_widths is not None:
        if widths != run_widths:
            raise ValueError(
                f"{start} its widths ({_widths(widths)}) are not those of {model_name} "
                f"({_widths(run_widths)}); {other_model}."
            )
        return
    if structure is None:
        if widths is not None:
            raise ValueError(
                f"{start} it holds a structurally pruned model ({_widths(widths)}), but this run "
                f"prunes individual weights of {model_name}; pass the --structure of the run "
                "that wrote it."
            )
        return
    if widths is None:
        raise ValueError(
            f"{start} this run prunes with --structure {structure}, but the checkpoint has the "
            f"dense widths of {model_name} (its run pruned individual weights); resume without "
            "--structure, or from a checkpoint of a structured run."
        )
    for i, (kind, kept) in enumerate((("heads", "attention heads"), ("mlp", "MLP units"))):
        if kind not in structure and widths[i] != model_widths(run_dense)[i]:
            raise ValueError(
                f"{start} its widths ({_widths(widths)}) remove {kept}, which --structure "
                f"{structure} keeps; pass the --structure of the run that wrote it."
            )


def pruning_callbacks(pruner: AFRPruner) -> list[TrainerCallback]:
    """The callbacks that keep a run's pruning through training and in its checkpoints:
    `PruningMaskCallback` with masks, else (a structurally pruned model, whose widths are in its
    config) `PrunerConfigCallback`, so that every checkpoint resumes with its pruning."""
    if pruner.masks:
        return [PruningMaskCallback.from_pruner(pruner)]
    return [PrunerConfigCallback(pruner.config)]


def _labels(config: Any) -> dict[int, str]:
    return {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}


def _first(labels: dict[int, str]) -> str:
    names = [labels[k] for k in sorted(labels)]
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else str(list(shape))


def _widths(widths: tuple[list[int], list[int]] | None) -> str:
    if widths is None:
        return "dense"
    return f"heads per block {widths[0]}, MLP units per block {widths[1]}"


def _describe(config: PrunerConfig, other: PrunerConfig) -> str:
    """Method, sparsity and structure of `config`, and its other options that `other` sets
    differently (`name=value`)."""
    structure = f", structure {config.structure!r}" if config.structure else ""
    shown = {"method", "sparsity", "structure"}
    differing = [
        f", {f.name}={getattr(config, f.name)!r}"
        for f in dataclasses.fields(PrunerConfig)
        if f.name not in shown and getattr(config, f.name) != getattr(other, f.name)
    ]
    return f"{config.method!r}, sparsity {config.sparsity}{structure}" + "".join(differing)
