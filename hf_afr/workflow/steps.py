"""The steps the scripts share: logging, the pruner to work with, scoring and pruning."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Any

import torch
from transformers.utils import logging

from ..checkpoint.card_data import PrunedCardData
from ..checkpoint.formats import MASKS_NAME
from ..checkpoint.load import quiet_transformers
from ..config import PrunerConfig
from ..criteria import get_criterion
from ..distributed import broadcast_masks
from ..pruner import AFRPruner
from ..report import SparsityReport
from ..sharding import is_dtensor
from ..structure.report import StructureReport
from .arguments import ModelArguments
from .data import hub_or_offline
from .resuming import resume_pruner
from .transforms import ImageTransform, scoring_dataloader

logger = logging.get_logger("hf_afr.scripts")

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _StdoutHandler(std_logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (it may be replaced, e.g. by a test)."""

    def emit(self, record: std_logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


class _Formatter(std_logging.Formatter):
    """Plain lines for progress, the level in front of anything that needs attention."""

    def format(self, record: std_logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno <= std_logging.INFO else f"{record.levelname}: {message}"


def setup_logging(log_level: str, is_main_process: bool, show_progress: bool) -> None:
    """Quiet by default: the scripts' own progress lines on the main process, and only warnings
    from transformers and datasets. `--log_level info` (or `debug`) shows theirs too."""
    import datasets

    library_level = _LEVELS.get(log_level, std_logging.WARNING)
    if not is_main_process:
        library_level = max(library_level, std_logging.WARNING)
    logging.set_verbosity(library_level)
    datasets.utils.logging.set_verbosity(library_level)
    if library_level > std_logging.INFO or not show_progress:
        datasets.disable_progress_bars()
    if not show_progress:
        logging.disable_progress_bar()
    own = std_logging.getLogger("hf_afr")
    own.setLevel(std_logging.INFO if is_main_process else std_logging.WARNING)
    if not own.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(_Formatter())
        own.addHandler(handler)
        own.propagate = False


def load_pruner(
    model_args: ModelArguments,
    pruner_config: PrunerConfig,
    id2label: dict[int, str],
    resume_checkpoint: str | None = None,
) -> AFRPruner:
    """The `AFRPruner` to work with; it has masks when they are reused rather than scored.

    Masks and widths come, in this order, from the checkpoint being resumed (its pruning, see
    `resuming.resume_pruner`), from an already pruned `model_name_or_path` (its own pruner
    config is kept, the pruning arguments are ignored), or nowhere (the returned pruner, with
    `pruner_config`, still has to prune).
    """
    name = model_args.model_name_or_path
    online = os.path.isdir(name) or hub_or_offline(f"model {name!r}")
    try:
        pruner = AFRPruner.from_pretrained(
            name,
            id2label=id2label,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
        )
    except OSError as err:
        if online:
            raise
        raise ValueError(
            f"Model {name!r} is not a local folder and not in the cache, and the Hub cannot be "
            "reached to download it: check the path, or connect once to download it."
        ) from err
    if resume_checkpoint is not None:
        run_config = pruner.config if pruner.is_pruned else _with(pruner, pruner_config).config
        return resume_pruner(pruner, run_config, resume_checkpoint, name)
    if pruner.is_pruned:
        if pruner.config != _with(pruner, pruner_config).config:  # "auto" features resolved
            logger.warning(
                f"{model_args.model_name_or_path} is already pruned ({pruner.config.method}, "
                f"sparsity {pruner.config.sparsity}); its masks are reused and the pruning "
                "arguments of this run are ignored."
            )
        return pruner
    if model_args.skip_pruning:
        raise ValueError(
            f"--skip_pruning needs a checkpoint pruned by hf_afr, but "
            f"{model_args.model_name_or_path} has no {MASKS_NAME}."
        )
    return _with(pruner, pruner_config)


def _with(pruner: AFRPruner, config: PrunerConfig) -> AFRPruner:
    """A pruner for the same model and checkpoint with another config (and no masks yet)."""
    other = AFRPruner(pruner.model, config)
    other.base_model, other.image_processor = pruner.base_model, pruner.image_processor
    return other


def attach_image_processor(pruner: AFRPruner, model_args: ModelArguments) -> Any:
    """The image processor of the run (`--image_processor_name`, else the checkpoint's), set on
    the pruner so that it is saved with the model."""
    name = model_args.image_processor_name
    if name is None and pruner.image_processor is None:
        raise ValueError(
            f"{model_args.model_name_or_path} has no image processor (preprocessor_config.json): "
            "pass --image_processor_name with the base model's (a Hub id or a folder)."
        )
    if name is not None:
        from transformers import AutoImageProcessor

        with quiet_transformers():
            pruner.image_processor = AutoImageProcessor.from_pretrained(
                name, cache_dir=model_args.cache_dir, revision=model_args.model_revision
            )
    return pruner.image_processor


def score_and_prune(
    pruner: AFRPruner,
    train_dataset,
    transform: ImageTransform,
    batch_size: int,
    device: torch.device,
    show_progress: bool,
) -> dict[str, torch.Tensor]:
    """Score on the seeded scoring batches (sharded over processes) and prune.

    All processes end with rank 0's masks (identical anyway: the gradients are all-reduced).
    """
    config = pruner.config
    pruner.model.to(device)
    loader = None
    if config.needs_data:
        loader = scoring_dataloader(
            train_dataset, transform, batch_size, config.num_batches, config.seed
        )
        reads_features = get_criterion(config.method).reads_features
        centred = " (centred)" if config.centers_features else ""
        features = f", {config.feature_token!r} features{centred}" if reads_features else ""
        logger.info(
            f"Scoring with {config.method!r}{features} on {config.num_batches} batches of "
            f"{batch_size} training images."
        )
    elif config.method == "synflow":
        logger.info(f"Scoring with 'synflow' (no data, {config.synflow_iterations} rounds).")
    pruner.prune(loader, show_progress=show_progress)
    if pruner.masks:  # structured pruning leaves none: every process chose the same groups
        pruner.set_masks(broadcast_masks(pruner.masks))
    if config.sparsity == 0:
        logger.warning(
            "--sparsity 0 prunes nothing: the saved model is the dense model (a baseline), with "
            "masks that keep every weight. Pass e.g. --sparsity 0.9 to prune 90% of the weights."
        )
    return pruner.masks


def describe_masks(pruner: AFRPruner) -> str:
    """One line: what was pruned, how much, and any fully pruned tensor."""
    report = pruner.sparsity_report()
    if isinstance(report, StructureReport):
        return (
            f"Removed {report.sparsity:.2%} of the prunable weights as whole heads/units with "
            f"{pruner.config.method!r}: heads per block {report.heads_after}, MLP units per block "
            f"{report.units_after}; parameters {report.params_after:,} of "
            f"{report.params_before:,}, MACs per image {report.macs_after:,} of "
            f"{report.macs_before:,}."
        )
    line = (
        f"Pruned {report.sparsity:.2%} of {report.numel:,} weights in {len(report.tensors)} "
        f"tensors with {pruner.config.method!r}"
    )
    if report.fully_pruned:
        line += f"; {len(report.fully_pruned)} tensors fully pruned"
    return line + "."


def weight_sparsity_report(pruner: AFRPruner) -> SparsityReport:
    """Sparsity measured on the weights themselves (a zero counts as pruned).

    With FSDP2 (DTensor weights) the nonzero flags are gathered: call it on every process.
    """
    nonzero = {name: p.detach() != 0 for name, p in pruner.params.items()}
    return SparsityReport.from_masks(
        {name: m.full_tensor() if is_dtensor(m) else m for name, m in nonzero.items()}
    )


def freeze_unused_parameters(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
    """Set `requires_grad=False` on trainable parameters that get no gradient from a batch.

    Such parameters (e.g. the mask token of some vision transformers, which classification
    never uses) would force DDP to search for unused parameters at every step; frozen, they
    are exactly as they were (an optimizer skips parameters without a gradient).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.train()
    try:
        outputs = model(**{k: v.to(next(model.parameters()).device) for k, v in batch.items()})
        grads = torch.autograd.grad(
            outputs.loss, [p for _, p in trainable], allow_unused=True, materialize_grads=False
        )
    finally:
        model.train(was_training)
    unused = [name for (name, p), g in zip(trainable, grads) if g is None]
    for name, p in trainable:
        if name in unused:
            p.requires_grad_(False)
    return unused


def reproducible_command(script: str, argv: list[str]) -> str:
    """The command line of this run, without the Hub token."""
    import shlex

    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--hub_token"):
            skip = arg == "--hub_token"
            continue
        kept.append(arg)
    return shlex.join(["python", f"scripts/{script}", *kept])


def card_details(
    script: str,
    argv: list[str],
    dataset_name: str | None,
    base_model: str,
    training: dict[str, Any] | None = None,
    accuracy: float | None = None,
) -> PrunedCardData:
    """Model-card data of a script run: base model, dataset, training settings, accuracy and
    the command. The Hub token is never written into the card.
    """
    from .data import EMBEDDED_PREFIX

    embedded = dataset_name is not None and dataset_name.startswith(EMBEDDED_PREFIX)
    hub_dataset = bool(dataset_name) and not embedded and not os.path.isdir(dataset_name)
    evaluation = {}
    if accuracy is not None:
        eval_dataset = dataset_name if hub_dataset or embedded else "imagefolder"
        evaluation = {
            "accuracy": accuracy,
            "eval_dataset": eval_dataset,
            "eval_split": "validation",
        }
    return PrunedCardData(
        command=reproducible_command(script, argv),
        base_model=base_model,
        training=training,
        datasets=dataset_name if hub_dataset else None,
        **evaluation,
    )


def with_measured_speed(card: PrunedCardData, model: torch.nn.Module) -> PrunedCardData:
    """`card` with a "Measured speed" section for a structurally pruned model (else `card`):
    inference against the dense model of the same config, timed side by side on its device."""
    from ..sharding import has_dtensor_parameters
    from ..structure.report import is_structured
    from ..structure.speed import measure_speedup

    if not is_structured(model.config) or has_dtensor_parameters(model):
        return card  # a sharded model's forward is a collective: no timing on one process
    speed = measure_speedup(model)
    logger.info(f"Structured model: {speed.speedup:.2f}x the dense model's inference speed.")
    sections = {**card.extra_sections, "Measured speed": speed.to_markdown()}
    return card.replace(extra_sections=sections)
