"""Knowledge distillation from a dense teacher while fine-tuning a pruned student.

The loss is DeiT's soft distillation (Touvron et al., 2021), on the logits:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

with the KL divergence averaged over the batch (`reduction="batchmean"`); the T^2 factor keeps
the soft term's gradient scale independent of the temperature (Hinton et al., 2015).
`DistillationTrainer` is a `transformers.Trainer` (a `ResumingTrainer`) that computes it in
`compute_loss`; the teacher is frozen, in eval mode, and placed on the device by accelerate (no DDP/FSDP wrapper,
it gets no gradient). Evaluation reports the student's plain cross-entropy.

Example:
    ```python
    >>> teacher = AutoModelForImageClassification.from_pretrained("vit-dense-finetuned")
    >>> trainer = DistillationTrainer(
    ...     model=pruner.model, teacher_model=teacher, alpha=0.5, temperature=2.0, args=args,
    ...     train_dataset=train_ds, callbacks=[PruningMaskCallback.from_pruner(pruner)],
    ... )
    >>> trainer.train()
    ```
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .resume import ResumingTrainer


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """`alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, labels)`.

    Args:
        student_logits (`Tensor`): `(batch, num_labels)`, with gradient.
        teacher_logits (`Tensor`): `(batch, num_labels)`, no gradient needed.
        labels (`Tensor`): `(batch,)` class indices.
        alpha (`float`): weight of the soft (teacher) term, in [0, 1].
        temperature (`float`): softening temperature T > 0.
    """
    t = temperature
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    soft = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def check_distillation_settings(alpha: float, temperature: float) -> None:
    """Raise a `ValueError` (one line) unless 0 <= alpha <= 1 and temperature > 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`distillation_alpha` must be in [0, 1], got {alpha}.")
    if not temperature > 0:
        raise ValueError(f"`distillation_temperature` must be positive, got {temperature}.")


def check_same_labels(student_config: Any, teacher_config: Any, teacher_name: str) -> None:
    """Raise a `ValueError` unless the teacher predicts the student's classes in the same order."""
    student = {int(k): v for k, v in student_config.id2label.items()}
    teacher = {int(k): v for k, v in teacher_config.id2label.items()}
    if student != teacher:
        diff = sorted(set(student.items()) ^ set(teacher.items()))[:3]
        raise ValueError(
            f"The teacher {teacher_name} has other labels than the student "
            f"({len(teacher)} vs {len(student)} classes; first differences: {diff}); "
            "distil from a model fine-tuned on the same dataset."
        )


class TeacherLogitCache:
    """The teacher's logits per example, keyed by a hash of the example's `pixel_values`.

    Only useful when the same examples come back unchanged every epoch (no random
    augmentation); an augmented view is a new key (computed, then stored as well).
    """

    def __init__(self) -> None:
        self.logits: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def keys(pixel_values: torch.Tensor) -> list[bytes]:
        rows = pixel_values.detach().cpu().contiguous().reshape(pixel_values.shape[0], -1)
        return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in rows]

    def __call__(self, teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        keys = self.keys(pixel_values)
        missing = [i for i, key in enumerate(keys) if key not in self.logits]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = teacher_logits(teacher, pixel_values[missing])
            for i, row in zip(missing, computed.float().cpu()):
                self.logits[keys[i]] = row
        return torch.stack([self.logits[key] for key in keys]).to(pixel_values.device)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The frozen teacher's logits (eval mode, no gradient)."""
    dtype = next(teacher.parameters()).dtype
    return teacher(pixel_values=pixel_values.to(dtype)).logits


class DistillationTrainer(ResumingTrainer):
    """A `Trainer` whose training loss distils a frozen teacher into the model (`distillation_loss`).

    Args:
        teacher_model (`nn.Module`): an image classifier with the same labels as the model.
        alpha (`float`, defaults to 0.5): weight of the soft term.
        temperature (`float`, defaults to 1.0): softening temperature.
        cache_teacher_logits (`bool`, defaults to `False`): keep the teacher's logits per example
            (`TeacherLogitCache`) so that later epochs skip the teacher; for data without
            random augmentation.
        args, kwargs: as for `transformers.Trainer`.
    """

    # The loss is a mean over this batch: `training_step` divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module,
        alpha: float = 0.5,
        temperature: float = 1.0,
        cache_teacher_logits: bool = False,
        **kwargs: Any,
    ):
        check_distillation_settings(alpha, temperature)
        super().__init__(*args, **kwargs)
        teacher_model.requires_grad_(False)
        self.teacher = self.accelerator.prepare_model(teacher_model.eval(), evaluation_mode=True)
        self.alpha, self.temperature = alpha, temperature
        self.teacher_cache = TeacherLogitCache() if cache_teacher_logits else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or "labels" not in inputs:  # evaluation: the plain loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        pixel_values = inputs["pixel_values"]
        self.teacher.eval()
        if self.teacher_cache is not None:
            target = self.teacher_cache(self.teacher, pixel_values)
        else:
            target = teacher_logits(self.teacher, pixel_values)
        loss = distillation_loss(outputs.logits, target, labels, self.alpha, self.temperature)
        return (loss, outputs) if return_outputs else loss
