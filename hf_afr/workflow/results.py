"""What a run reports and leaves behind: accuracy, the training settings, the Hub upload."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import EvalPrediction, TrainingArguments
from transformers.utils import logging

from ..checkpoint.card_data import PrunedCardData
from ..pruner import AFRPruner

if TYPE_CHECKING:
    import evaluate

logger = logging.get_logger("hf_afr.scripts")


def load_accuracy_metric(cache_dir: str | None = None) -> evaluate.EvaluationModule | None:
    """`evaluate.load("accuracy")`, or None (with a warning) where it cannot be loaded.

    The metric's script comes from the Hub once and is cached; offline without that cache
    (`HF_EVALUATE_OFFLINE=1` fails at once instead of trying the network) it is unavailable.
    """
    import evaluate  # 2 s to import: only where a script evaluates

    from .data import hub_or_offline

    hub_or_offline("the 'accuracy' metric")
    try:
        return evaluate.load("accuracy", cache_dir=cache_dir)
    except OSError as err:  # ConnectionError and FileNotFoundError included
        logger.warning(
            "Could not load evaluate's 'accuracy' metric (not cached, and the Hub cannot be "
            "reached); computing the same top-1 accuracy with numpy. Run once with Hub access to "
            f"cache it. ({type(err).__name__})"
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


def training_settings(args: TrainingArguments, num_train_examples: int) -> dict[str, Any]:
    """The fine-tuning settings a model card lists (what someone would need to redo the run)."""
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    length = (
        f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    )
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "training examples": f"{num_train_examples:,}",
        "length": length,
        "effective batch size": batch,
        "optimizer": f"{_value(args.optim)} (learning rate {args.learning_rate:g}, weight decay "
        f"{args.weight_decay:g})",
        "schedule": f"{_value(args.lr_scheduler_type)} with warmup {args.warmup_steps:g}",
        "precision": precision,
        "seed": args.seed,
        "masks": "kept exact by hf_afr's PruningMaskCallback (pruned weights stay zero)",
    }


def _value(option: Any) -> Any:
    """An enum option as the value a user types (`adamw_torch_fused`, not `OptimizerNames.X`)."""
    return getattr(option, "value", option)


def push_pruned_model(
    pruner: AFRPruner,
    repo_id: str | None,
    output_dir: str,
    checkpoint_format: str,
    commit_message: str,
    card_data: PrunedCardData,
    token: str | None = None,
    private: bool | None = None,
) -> None:
    """One Hub commit with everything the local save writes (`repo_id` defaults to the name of
    `output_dir`)."""
    repo_id = repo_id or os.path.basename(os.path.abspath(output_dir))
    pruner.push_to_hub(
        repo_id,
        checkpoint_format=checkpoint_format,
        commit_message=commit_message,
        token=token,
        private=private,
        image_processor=pruner.image_processor,
        card_data=card_data,
    )
    logger.info(f"Pushed the pruned model to the Hub: {repo_id}.")
