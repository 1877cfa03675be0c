"""Command-line arguments of the scripts: dataclasses parsed by `HfArgumentParser`.

`parse_arguments` takes command-line options, or a `.json` / `.yaml` file of them followed by
command-line options that override the file.

Two options of `PrunerConfig` have the same meaning for the whole run and are not separate
options: `--seed` (training, the choice of the scoring batches and the 'random' criterion) and
`--gradient_checkpointing` (training and scoring). `PruningArguments` is `PrunerConfig` without
them; `pruner_config` takes them from the run's arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from transformers import HfArgumentParser

from ..checkpoint.formats import check_format
from ..config import PrunerConfig

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class ModelArguments:
    """Which model to prune and fine-tune, and how to save it."""

    model_name_or_path: str = field(
        default="google/vit-base-patch16-224",
        metadata={
            "help": "Checkpoint to prune: a Hub id or a local folder. A checkpoint already pruned by "
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into an `output_dir` that already holds files (another model, another "
            "run's results); without it such a folder is refused before any work."
        },
    )

    def __post_init__(self) -> None:
        check_format(self.checkpoint_format)


@dataclass
class DataTrainingArguments:
    """Which data to score, fine-tune and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub, a local folder `datasets` can load (including one "
            "written by `save_to_disk`), or an embedded offline dataset: 'hf_afr:digits' "
            "(real handwritten digits), 'hf_afr:cyrillic' (glyphs) or 'hf_afr:typefaces' "
            "(which of 20 typefaces drew a letter)."
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
    horizontal_flip: bool = field(
        default=True,
        metadata={
            "help": "Randomly mirror training images. Turn it off for digits, text and anything "
            "whose class changes in a mirror."
        },
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
            "the training batch size in finetune.py and 8 in prune.py; it does not depend on the "
            "number of processes."
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


@dataclass
class PruneArguments:
    """Where `scripts/prune.py` writes its result, and how it runs (it trains nothing)."""

    output_dir: str = field(metadata={"help": "Folder for the pruned checkpoint."})
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the scoring batches and of the 'random' criterion."},
    )
    use_cpu: bool = field(
        default=False, metadata={"help": "Score on the CPU even if a GPU is available."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Also upload the pruned checkpoint to the Hub."}
    )
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub repository to push to (default: the name of `output_dir`)."},
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the Hub repository as private."}
    )
    log_level: str = field(
        default="warning",
        metadata={
            "help": "Verbosity of transformers and datasets: 'debug', 'info', 'warning' or "
            "'error'. The script's own progress lines are shown in any case."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bars."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the scoring backward (less memory)."},
    )


@dataclass
class DistillationArguments:
    """Distillation from a dense teacher while fine-tuning (`hf_afr.distillation`)."""

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Distil from this image classifier (a Hub id or folder with the same labels, "
            "e.g. the dense model fine-tuned on the task); off when not given."
        },
    )
    distillation_alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the teacher's soft targets; 1 - alpha weighs the labels."},
    )
    distillation_temperature: float = field(
        default=2.0, metadata={"help": "Temperature T of the soft targets (loss scaled by T^2)."}
    )
    cache_teacher_logits: bool = field(
        default=False,
        metadata={
            "help": "Keep the teacher's logits per training example so later epochs skip the "
            "teacher (needs `--horizontal_flip false`: no random augmentation)."
        },
    )

    def __post_init__(self) -> None:
        from ..distillation import check_distillation_settings

        check_distillation_settings(self.distillation_alpha, self.distillation_temperature)


# `PrunerConfig` fields that are options of the whole run (see the module docstring).
SHARED_OPTIONS = ("seed", "gradient_checkpointing")


def _pruning_arguments_class() -> type:
    """`PrunerConfig`'s fields as a dataclass, without the `SHARED_OPTIONS`."""

    def copy(f: dataclasses.Field) -> tuple[str, Any, dataclasses.Field]:
        if f.default_factory is not dataclasses.MISSING:
            return f.name, f.type, field(default_factory=f.default_factory, metadata=f.metadata)
        return f.name, f.type, field(default=f.default, metadata=f.metadata)

    fields = [copy(f) for f in dataclasses.fields(PrunerConfig) if f.name not in SHARED_OPTIONS]
    cls = dataclasses.make_dataclass("PruningArguments", fields)
    cls.__module__ = __name__
    cls.__doc__ = "The pruning options: the `PrunerConfig` fields that are not `SHARED_OPTIONS`."
    return cls


PruningArguments = _pruning_arguments_class()


def pruner_config(pruning_args: Any, run_args: Any) -> PrunerConfig:
    """The `PrunerConfig` of a run: the pruning options plus the shared ones of `run_args`
    (`TrainingArguments` or `PruneArguments`)."""
    shared = {name: getattr(run_args, name) for name in SHARED_OPTIONS}
    return PrunerConfig(**dataclasses.asdict(pruning_args), **shared)


class ScriptArgumentParser(HfArgumentParser):
    """`HfArgumentParser` whose errors are one line (no usage dump of hundreds of options)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_arguments(
    dataclass_types: Sequence[type], argv: Sequence[str], prog: str | None = None
) -> tuple:
    """Parse `argv` into instances of `dataclass_types`.

    `argv` may start with a `.json` / `.yaml` file of arguments; the options after it override
    the file. An unknown key in the file is an error (with the closest known name).
    """
    parser = ScriptArgumentParser(dataclass_types, prog=prog)
    argv = list(argv)
    if argv and argv[0].endswith(ARGUMENT_FILE_SUFFIXES) and not argv[0].startswith("-"):
        values = _read_argument_file(argv.pop(0))
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Unknown argument {unknown[0]!r} in the argument file{hint}.")
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if remaining:
        options = [o for action in parser._actions for o in action.option_strings]
        close = difflib.get_close_matches(remaining[0].split("=")[0], options, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        parser.error(f"unrecognized arguments: {' '.join(remaining)}{hint}")
    return tuple(parsed)


def _read_argument_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"The argument file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".json"):
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"The argument file {path} is not valid: {err}.") from None
    except Exception as err:  # noqa: BLE001 - yaml's errors share no base class with ValueError
        raise ValueError(f"The argument file {path} is not valid YAML: {err}.") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"The argument file {path} must hold a mapping of argument names to values."
        )
    return values
