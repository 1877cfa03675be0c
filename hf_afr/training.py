"""Data, preprocessing and saving helpers shared by `scripts/finetune.py` and `scripts/prune.py`.

The argument dataclasses below are parsed with `HfArgumentParser` together with
`PrunerConfig` and `transformers.TrainingArguments`, so both scripts take the same names.
Every check on the data runs before anything is written or trained.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import random
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, DatasetDict, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image, ImageOps
from torch.utils.data import DataLoader
from transformers import EvalPrediction, HfArgumentParser, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .config import PrunerConfig
from .distributed import broadcast_masks, shard_batches
from .mask_io import MASKS_NAME, load_masks
from .pruner import AFRPruner
from .report import SparsityReport

if TYPE_CHECKING:
    import evaluate

logger = logging.get_logger(__name__)

CHECKPOINT_FORMATS = ("dense", "compact")


@dataclass
class ModelArguments:
    """Which model to prune and fine-tune, and how to save it."""

    model_name_or_path: str = field(
        default="google/vit-base-patch16-224",
        metadata={
            "help": "ViT checkpoint: a Hub id or a local folder. A checkpoint already pruned by "
            "hf_afr (with pruning_masks.safetensors) keeps its masks and is not scored again."
        },
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "Image processor name or path, if not the one of `model_name_or_path`."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where to store models and datasets downloaded from the Hub."},
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "Model version to use: a branch name, tag name or commit id."},
    )
    skip_pruning: bool = field(
        default=False,
        metadata={
            "help": "Do not score: fine-tune with the masks stored in `model_name_or_path` (an "
            "error if it has none)."
        },
    )
    checkpoint_format: str = field(
        default="dense",
        metadata={
            "help": "Format of the saved (and pushed) model: 'dense' (a standard transformers "
            "checkpoint with zeros, plus the masks) or 'compact' (bitmask + nonzero values)."
        },
    )

    def __post_init__(self) -> None:
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"`checkpoint_format` must be one of {', '.join(CHECKPOINT_FORMATS)}, "
                f"got {self.checkpoint_format!r}."
            )


@dataclass
class DataTrainingArguments:
    """Which data to score, fine-tune and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub, a local folder `datasets` can load (including one "
            "written by `save_to_disk`), or an embedded offline dataset: 'hf_afr:digits' "
            "(real handwritten digits) or 'hf_afr:cyrillic' (glyphs)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset, if it has several."}
    )
    train_dir: str | None = field(
        default=None,
        metadata={"help": "A local `imagefolder` of training images (one sub-folder per class)."},
    )
    validation_dir: str | None = field(
        default=None,
        metadata={"help": "A local `imagefolder` of validation images (one sub-folder per class)."},
    )
    image_column_name: str = field(
        default="image", metadata={"help": "The dataset column holding the images."}
    )
    label_column_name: str = field(
        default="label", metadata={"help": "The dataset column holding the class labels."}
    )
    train_split_name: str = field(
        default="train", metadata={"help": "The dataset split to score and fine-tune on."}
    )
    validation_split_name: str | None = field(
        default=None,
        metadata={
            "help": "The split to evaluate on (e.g. 'test'). Default: 'validation' if the dataset "
            "has one, else `train_val_split` of the training split is held out."
        },
    )
    train_val_split: float = field(
        default=0.15,
        metadata={"help": "Fraction of the training set split off for validation if none exists."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the training set to this many examples (for quick runs)."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the validation set to this many examples (for quick runs)."},
    )
    scoring_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size of the scoring batches (`num_batches` of them, taken from the "
            "training set with the evaluation transforms). Defaults to "
            "`per_device_train_batch_size`; it does not depend on the number of processes."
        },
    )

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_dir is None:
            raise ValueError(
                "Pass a dataset: `--dataset_name` (Hub id or local folder) or `--train_dir` "
                "(and optionally `--validation_dir`) for a local imagefolder."
            )
        if self.dataset_name is not None and (self.train_dir or self.validation_dir):
            raise ValueError("Pass either `--dataset_name` or `--train_dir`/`--validation_dir`.")
        if not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"`train_val_split` must be in [0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples", "scoring_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")


# ---------------------------------------------------------------------------------------
# Loading and validation


def load_image_dataset(
    data_args: DataTrainingArguments, cache_dir: str | None = None, token: str | None = None
) -> DatasetDict:
    """Load the Hub/local dataset or the `imagefolder`s named by `data_args`."""
    if data_args.dataset_name is not None:
        name = data_args.dataset_name
        if name.startswith(EMBEDDED_PREFIX):
            return load_embedded_dataset(name)
        if os.path.isfile(os.path.join(name, "dataset_dict.json")):
            return load_from_disk(name)
        return _load(name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
    data_files = {}
    for split, folder in (("train", data_args.train_dir), ("validation", data_args.validation_dir)):
        if folder is not None:
            _check_image_folder(folder, split)
            data_files[split] = os.path.join(folder, "**")
    return _load("imagefolder", data_files=data_files, cache_dir=cache_dir)


EMBEDDED_PREFIX = "hf_afr:"
EMBEDDED_DATASETS = ("digits", "cyrillic")


def load_embedded_dataset(name: str) -> DatasetDict:
    """The offline datasets that ship with hf_afr: `hf_afr:digits` and `hf_afr:cyrillic`.

    `digits`: scikit-learn's real handwritten digits (upsampled to 32 px), stratified 80/20
    train/validation split. `cyrillic`: Cyrillic glyphs (absent from the default model's
    pretraining), training fonts for train, held-out fonts for validation.
    """
    from .data.glyphs import digits_dataset, glyph_dataset

    key = name[len(EMBEDDED_PREFIX) :]
    if key == "digits":
        return DatasetDict(train=digits_dataset("train"), validation=digits_dataset("test"))
    if key == "cyrillic":
        return DatasetDict(
            train=glyph_dataset("cyrillic", "train", samples_per_class=40, seed=1),
            validation=glyph_dataset("cyrillic", "test", samples_per_class=20, seed=2),
        )
    choices = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_DATASETS)
    raise ValueError(f"Unknown embedded dataset {name!r}; choose one of: {choices}.")


def _load(path: str, *args: Any, **kwargs: Any) -> DatasetDict:
    try:
        return load_dataset(path, *args, **kwargs)
    except ValueError as err:  # datasets' wording for an empty split
        if "corresponds to no data" not in str(err):
            raise
        raise ValueError(f"The dataset {path!r} has an empty split ({err}).") from err


def _check_image_folder(folder: str, split: str) -> None:
    if not os.path.isdir(folder):
        raise ValueError(f"The {split} folder {folder!r} does not exist.")
    if not any(files for _, _, files in os.walk(folder)):
        raise ValueError(
            f"The {split} folder {folder!r} is empty: an imagefolder needs one sub-folder of "
            "images per class."
        )


def validate_split(dataset, split: str, image_column: str, label_column: str) -> None:
    """Raise a `ValueError` unless the split has rows, an image column and a ClassLabel column."""
    columns = list(dataset.column_names)
    if image_column not in columns:
        raise ValueError(
            f"The {split} split has no image column {image_column!r} (columns: {columns}); "
            "set `--image_column_name`."
        )
    if label_column not in columns:
        raise ValueError(
            f"The {split} split has no label column {label_column!r} (columns: {columns}); "
            "set `--label_column_name`."
        )
    feature = dataset.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"The label column {label_column!r} must be a `datasets.ClassLabel` (class names and "
            f"ids), got {feature}. Convert it with `dataset.class_encode_column({label_column!r})` "
            "or cast it with `cast_column`."
        )
    if not isinstance(dataset.features[image_column], ImageFeature):
        raise ValueError(
            f"The image column {image_column!r} must be a `datasets.Image` feature, got "
            f"{dataset.features[image_column]}. Cast it with `cast_column(..., Image())`."
        )
    if len(dataset) == 0:
        raise ValueError(f"The {split} split is empty.")


def prepare_splits(
    dataset: DatasetDict, data_args: DataTrainingArguments, seed: int, need_validation: bool
) -> DatasetDict:
    """Validate the splits, split off validation if needed and truncate; all seeded."""
    train_name, eval_name = data_args.train_split_name, data_args.validation_split_name
    for name in (train_name, eval_name):
        if name is not None and name not in dataset:
            raise ValueError(f"The dataset has no {name!r} split (splits: {list(dataset)}).")
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    validate_split(dataset[train_name], "train", image_column, label_column)
    splits = {"train": dataset[train_name]}
    eval_name = eval_name or ("validation" if "validation" in dataset else None)
    if eval_name is not None:
        splits["validation"] = dataset[eval_name]
    elif need_validation:
        splits.update(_split_off_validation(dataset[train_name], data_args.train_val_split, seed))
    if data_args.max_train_samples is not None:
        splits["train"] = _truncate(splits["train"], data_args.max_train_samples, seed)
    if "validation" in splits:
        validate_split(splits["validation"], "validation", image_column, label_column)
        _check_same_classes(splits, label_column)
        if data_args.max_eval_samples is not None:
            splits["validation"] = _truncate(splits["validation"], data_args.max_eval_samples, seed)
    return DatasetDict(splits)


def _split_off_validation(train, fraction: float, seed: int) -> dict[str, Any]:
    if fraction <= 0.0:
        raise ValueError(
            "Evaluation needs a validation split: the dataset has none and `train_val_split` is 0."
        )
    if round(fraction * len(train)) < 1 or len(train) - round(fraction * len(train)) < 1:
        raise ValueError(
            f"Cannot split {len(train)} training examples with train_val_split={fraction}: "
            "one of the two parts would be empty."
        )
    parts = train.train_test_split(test_size=fraction, seed=seed)
    return {"train": parts["train"], "validation": parts["test"]}


def _truncate(dataset, n: int, seed: int):
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))


def _check_same_classes(splits: dict[str, Any], label_column: str) -> None:
    names = {split: ds.features[label_column].names for split, ds in splits.items()}
    if len({tuple(n) for n in names.values()}) > 1:
        raise ValueError(f"The splits have different class names: {names}.")


def label_maps(dataset, label_column: str) -> tuple[dict[str, int], dict[int, str]]:
    """`(label2id, id2label)` from the split's `ClassLabel` names."""
    names = dataset.features[label_column].names
    return {name: i for i, name in enumerate(names)}, dict(enumerate(names))


# ---------------------------------------------------------------------------------------
# Preprocessing


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: grayscale is replicated, transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


class ImageTransform:
    """`set_transform` function: images to RGB `pixel_values` with the image processor.

    Args:
        image_processor: the model's `AutoImageProcessor` (resizing, rescaling, normalization).
        image_column (`str`), label_column (`str`): dataset columns.
        augment (`bool`, defaults to `False`): random horizontal flips (training only).
    """

    def __init__(self, image_processor, image_column: str, label_column: str, augment=False):
        self.image_processor = image_processor
        self.image_column = image_column
        self.label_column = label_column
        self.augment = augment

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [to_rgb(image) for image in batch[self.image_column]]
        if self.augment:
            images = [ImageOps.mirror(im) if random.random() < 0.5 else im for im in images]
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": batch[self.label_column]}


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack examples into `{"pixel_values": (B, 3, H, W), "labels": (B,)}`."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


def scoring_dataloader(
    train_dataset, transform: ImageTransform, batch_size: int, num_batches: int, seed: int
) -> DataLoader:
    """This process's scoring batches: `num_batches` seeded batches of the training set.

    The batches are the same whatever the number of processes; with several, each process
    gets every `world_size`-th batch (the criteria sum the gradients over processes).
    """
    n = min(len(train_dataset), batch_size * num_batches)
    if n < batch_size * num_batches:
        logger.warning(
            f"The training set has {len(train_dataset)} examples: scoring uses "
            f"{-(-n // batch_size)} batches instead of {num_batches}."
        )
    order = np.random.default_rng(seed).permutation(len(train_dataset))[:n].tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return DataLoader(
        train_dataset.with_transform(transform),
        batch_sampler=shard_batches(batches),
        collate_fn=collate_fn,
    )


# ---------------------------------------------------------------------------------------
# Results


def weight_sparsity_report(pruner: AFRPruner) -> SparsityReport:
    """Sparsity measured on the weights themselves (a zero counts as pruned)."""
    return SparsityReport.from_masks({name: p.detach() != 0 for name, p in pruner.params.items()})


def save_pruned_model(
    pruner: AFRPruner,
    image_processor,
    output_dir: str,
    checkpoint_format: str = "dense",
    card_kwargs: dict[str, Any] | None = None,
) -> None:
    """Save model, masks, pruner config, image processor and model card into `output_dir`.

    `AFRPruner.save_pretrained` stages every file and moves `config.json` in last, so an
    interrupted save never leaves a folder that looks like a model.
    """
    pruner.save_pretrained(
        output_dir,
        checkpoint_format=checkpoint_format,
        image_processor=image_processor,
        model_card_kwargs=card_kwargs,
    )


def push_pruned_model(
    pruner: AFRPruner,
    image_processor,
    training_args: TrainingArguments,
    checkpoint_format: str,
    commit_message: str,
    card_kwargs: dict[str, Any] | None = None,
    token: str | None = None,
) -> None:
    """One Hub commit with everything `save_pruned_model` writes (`--hub_model_id` or the
    output folder's name as repository). `token` defaults to `training_args.hub_token`."""
    repo_id = training_args.hub_model_id or os.path.basename(
        os.path.abspath(training_args.output_dir)
    )
    pruner.push_to_hub(
        repo_id,
        checkpoint_format=checkpoint_format,
        commit_message=commit_message,
        token=token or training_args.hub_token,
        private=training_args.hub_private_repo,
        image_processor=image_processor,
        **(card_kwargs or {}),
    )


def card_kwargs(
    script: str, argv: Sequence[str] | None, data_args: DataTrainingArguments, accuracy=None
) -> dict[str, Any]:
    """Model-card details: dataset, accuracy and the command that reproduces the run.

    The Hub token is never written into the card.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--hub_token"):
            skip = arg == "--hub_token"
            continue
        kept.append(arg)
    kwargs: dict[str, Any] = {"command": shlex.join(["python", f"scripts/{script}", *kept])}
    name = data_args.dataset_name
    embedded = name is not None and name.startswith(EMBEDDED_PREFIX)
    hub_dataset = name and not embedded and not os.path.isdir(name)
    if hub_dataset:
        kwargs["datasets"] = name
    if accuracy is not None:
        eval_dataset = name if hub_dataset or embedded else "imagefolder"
        kwargs.update(accuracy=accuracy, eval_dataset=eval_dataset, eval_split="validation")
    return kwargs


def load_accuracy_metric(cache_dir: str | None = None) -> evaluate.EvaluationModule | None:
    """`evaluate.load("accuracy")`, or None (with a warning) where it cannot be loaded.

    The metric's script comes from the Hub once and is cached; offline without that cache
    (`HF_EVALUATE_OFFLINE=1` fails at once instead of trying the network) it is unavailable.
    """
    import evaluate  # 2 s to import: only where a script evaluates

    try:
        return evaluate.load("accuracy", cache_dir=cache_dir)
    except OSError as err:  # ConnectionError and FileNotFoundError included
        logger.warning(
            f"Could not load evaluate's 'accuracy' metric ({err}); computing the same top-1 "
            "accuracy with numpy. Run once with Hub access to cache the metric."
        )
        return None


def accuracy_metric_fn(
    metric: evaluate.EvaluationModule | None,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer `compute_metrics`: top-1 accuracy of the logits, by `metric` (evaluate's
    `accuracy`) or, where it is None, by numpy with the same definition."""

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        logits = eval_pred.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        if metric is not None:
            return metric.compute(predictions=predictions, references=eval_pred.label_ids)
        return {"accuracy": float(np.mean(predictions == eval_pred.label_ids))}

    return compute_metrics


# ---------------------------------------------------------------------------------------
# Script plumbing


def parse_script_args(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, PrunerConfig, TrainingArguments]:
    """Parse `(ModelArguments, DataTrainingArguments, PrunerConfig, TrainingArguments)`.

    Takes command-line arguments or a single `.json` file of them. `--seed` is shared: it seeds
    training, the choice of the scoring batches and the 'random' criterion.
    """
    parser = HfArgumentParser(
        (ModelArguments, DataTrainingArguments, PrunerConfig, TrainingArguments),
        conflict_handler="resolve",  # PrunerConfig and TrainingArguments both have `seed`
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    # Not `parse_args_into_dataclasses`: it hands each option to one dataclass only.
    values = vars(parser.parse_args(argv))
    return tuple(
        dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init})
        for dtype in parser.dataclass_types
    )


def setup_logging(training_args: TrainingArguments) -> None:
    """HF-example logging: INFO on the main process, WARNING on the others."""
    std_logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[std_logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    std_logging.getLogger("hf_afr").setLevel(log_level)
    logging.enable_default_handler()
    logging.enable_explicit_format()


def resolve_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint folder to resume from (`"last"`/`"true"`: the newest in `output_dir`).

    It must hold the masks written by `PruningMaskCallback`; checked before any work.
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None or not training_args.do_train:
        return None
    if str(checkpoint).lower() in ("true", "last"):
        found = (
            get_last_checkpoint(training_args.output_dir)
            if os.path.isdir(training_args.output_dir)
            else None
        )
        if found is None:
            raise ValueError(f"No checkpoint to resume from in {training_args.output_dir}.")
        checkpoint = found
    if not os.path.isdir(checkpoint):
        raise ValueError(f"`resume_from_checkpoint` {checkpoint!r} is not a folder.")
    if not os.path.isfile(os.path.join(checkpoint, MASKS_NAME)):
        raise ValueError(
            f"Checkpoint {checkpoint} has no {MASKS_NAME}: only checkpoints written with "
            "hf_afr's PruningMaskCallback can be resumed with their exact masks."
        )
    return checkpoint


def load_pruner(
    model_args: ModelArguments,
    pruner_config: PrunerConfig,
    id2label: dict[int, str],
    resume_checkpoint: str | None = None,
) -> AFRPruner:
    """The `AFRPruner` to work with; it has masks when they are reused rather than scored.

    Masks come, in this order, from the checkpoint being resumed, from an already pruned
    `model_name_or_path` (its own pruner config is kept, the pruning arguments are ignored),
    or nowhere (the returned pruner, with `pruner_config`, still has to prune).
    """
    pruner = AFRPruner.from_pretrained(
        model_args.model_name_or_path,
        id2label=id2label,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
    )
    if resume_checkpoint is not None:
        logger.info(f"Resuming from {resume_checkpoint}: reusing its pruning masks.")
        resumed = AFRPruner(pruner.model, PrunerConfig.from_pretrained(resume_checkpoint))
        resumed.set_masks(load_masks(os.path.join(resume_checkpoint, MASKS_NAME)))
        resumed.base_model = pruner.base_model
        return resumed
    if pruner.masks:
        if pruner.config != pruner_config:
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
    fresh = AFRPruner(pruner.model, pruner_config)
    fresh.base_model = pruner.base_model
    return fresh


def score_and_prune(
    pruner: AFRPruner,
    train_dataset,
    transform: ImageTransform,
    batch_size: int,
    training_args: TrainingArguments,
) -> dict[str, torch.Tensor]:
    """Score on the seeded scoring batches (sharded over processes) and prune.

    All processes end with rank 0's masks (identical anyway: the gradients are all-reduced).
    """
    config = pruner.config
    pruner.model.to(training_args.device)
    loader = None
    if config.needs_data:
        loader = scoring_dataloader(
            train_dataset, transform, batch_size, config.num_batches, config.seed
        )
    logger.info(f"Scoring with {config.method!r} on {config.num_batches} batches of {batch_size}.")
    pruner.prune(loader, show_progress=training_args.should_log)
    pruner.set_masks(broadcast_masks(pruner.masks))
    return pruner.masks
