"""Resuming training from a Trainer checkpoint with every weight landing where it belongs.

transformers 5 renamed the modules of several families (ViT's `vit.encoder.layer.*` became
`vit.layers.*`) and saves checkpoints with the old names, converting them back in
`from_pretrained`. `Trainer`'s resume (and `load_best_model_at_end`) loads the checkpoint with a
plain `load_state_dict(strict=False)` instead: the renamed weights do not land, the encoder stays at
its pretrained values and only a "missing keys" warning says so. `load_checkpoint_weights` loads
through `from_pretrained` (the same key conversion) and refuses a checkpoint whose weights do not
all land; `ResumingTrainer` is a `Trainer` that uses it. A structurally pruned model (per-layer
widths on its config) is read at its widths; `PrunerConfigCallback` writes the pruner config into
the checkpoints of such a model when it has no masks (`PruningMaskCallback` does otherwise).

Example:
    ```python
    from hf_afr import PruningMaskCallback
    from hf_afr import ResumingTrainer

    trainer = ResumingTrainer(model=pruner.model, args=args, train_dataset=train,
                              callbacks=[PruningMaskCallback.from_pruner(pruner)])
    trainer.train(resume_from_checkpoint="out/checkpoint-500")
    ```
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .checkpoint.load import loading_class, quiet_transformers
from .config import PrunerConfig

_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def load_checkpoint_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load the weights of a `save_pretrained` folder into `model`, every one or none.

    The folder is read by `type(model).from_pretrained` with `model.config`, so that the keys go
    through the conversion transformers applies to checkpoints (legacy module names included);
    then every parameter and buffer is copied into `model` in place (its dtype and device kept).
    A structurally pruned model (per-layer widths on its config) is read at those widths.

    Args:
        model (`PreTrainedModel`): the model to load into.
        checkpoint (`str` or `os.PathLike`): a folder written by `save_pretrained` (a `Trainer`
            checkpoint, say).

    Raises:
        `ValueError`: a weight of the checkpoint does not land in `model` or has another shape, or
            a weight of `model` is not in the checkpoint; `model` is then left unchanged.
    """
    checkpoint = os.fspath(checkpoint)
    with quiet_transformers():  # a structurally pruned model is built at its per-layer widths
        loaded, info = loading_class(type(model), model.config).from_pretrained(
            checkpoint, config=model.config, output_loading_info=True, ignore_mismatched_sizes=True
        )  # mismatched sizes reported in `info` and refused below
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(key for key, *_ in info["mismatched_keys"])
    problems = [
        (missing, "missing from it"),
        (unexpected, "unknown to the model"),
        (mismatched, "of another shape"),
    ]
    found = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in problems if keys]
    if found:
        raise ValueError(
            f"Cannot resume from {checkpoint}: its weights do not all land in "
            f"{type(model).__name__} ({'; '.join(found)}); resume from a checkpoint of the same "
            "model, or start again without --resume_from_checkpoint."
        )
    state = loaded.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            tensor.copy_(state[name])


def _has_weights(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in _WEIGHT_FILES)


class ResumingTrainer(Trainer):
    """A `Trainer` whose resume and `load_best_model_at_end` load checkpoints through
    `load_checkpoint_weights` (transformers' key conversion; a checkpoint whose weights do not
    all land is refused). DeepSpeed, FSDP, SageMaker and PEFT checkpoints load as in `Trainer`."""

    def _plain(self, model: nn.Module, folder: str) -> bool:
        return (
            isinstance(model, PreTrainedModel)
            and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
            and getattr(model, "peft_config", None) is None
            and _has_weights(folder)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        model = self.model if model is None else model
        if not self._plain(model, resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if not self._plain(self.model, best):
            return super()._load_best_model()
        load_checkpoint_weights(self.model, best)


class PrunerConfigCallback(TrainerCallback):
    """Writes `pruner_config.json` into every Trainer checkpoint of a structurally pruned model.

    Such a model has no masks (its per-layer widths are in its `config.json`), so
    `PruningMaskCallback`, which writes the config beside the masks, is not used; with this
    callback its checkpoints record the pruning that made the model, resume with it and load
    with `AFRPruner.from_pretrained`.

    Args:
        pruner_config (`PrunerConfig`): the config of the structured pruning.

    Example:
        ```python
        >>> trainer = ResumingTrainer(model=pruner.model, args=args, train_dataset=train_ds,
        ...                           callbacks=[PrunerConfigCallback(pruner.config)])
        ```
    """

    def __init__(self, pruner_config: PrunerConfig):
        if not isinstance(pruner_config, PrunerConfig):
            raise ValueError(
                f"PrunerConfigCallback needs a PrunerConfig, got {type(pruner_config).__name__}."
            )
        self.pruner_config = pruner_config

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            self.pruner_config.save_pretrained(folder)
