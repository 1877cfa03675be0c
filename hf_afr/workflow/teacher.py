"""The teacher of a distilled fine-tuning run: loaded, checked, handed to the Trainer."""

from __future__ import annotations

from typing import Any

from transformers import Trainer
from transformers.utils import logging

from ..checkpoint.load import quiet_transformers
from ..distillation import DistillationTrainer, check_same_labels
from ..resume import ResumingTrainer
from .arguments import DistillationArguments

logger = logging.get_logger("hf_afr.scripts")


def trainer_with_teacher(
    distill_args: DistillationArguments,
    student_config: Any,
    augmented: bool,
    cache_dir: str | None = None,
) -> tuple[type[Trainer], dict[str, Any]]:
    """`(ResumingTrainer, {})` without a teacher; else `(DistillationTrainer, its teacher kwargs)`.

    The teacher is loaded with `AutoModelForImageClassification` (a checkpoint pruned by hf_afr,
    dense or compact, loads as well) and must predict the student's labels.
    """
    name = distill_args.teacher_model_name_or_path
    if name is None:
        return ResumingTrainer, {}
    if distill_args.cache_teacher_logits and augmented:
        raise ValueError(
            "--cache_teacher_logits needs unaugmented training data: add --horizontal_flip false "
            "(a flipped image would miss the cache)."
        )
    from transformers import AutoModelForImageClassification

    try:
        with quiet_transformers():
            teacher = AutoModelForImageClassification.from_pretrained(name, cache_dir=cache_dir)
    except OSError as err:
        raise ValueError(
            f"Cannot load the teacher {name!r} as an image classifier: {err}".splitlines()[0]
        ) from None
    check_same_labels(student_config, teacher.config, name)
    logger.info(
        f"Distilling from {name} (alpha {distill_args.distillation_alpha}, temperature "
        f"{distill_args.distillation_temperature})."
    )
    return DistillationTrainer, {
        "teacher_model": teacher,
        "alpha": distill_args.distillation_alpha,
        "temperature": distill_args.distillation_temperature,
        "cache_teacher_logits": distill_args.cache_teacher_logits,
    }
