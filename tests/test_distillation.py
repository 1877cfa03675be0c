"""`hf_afr.distillation` and `scripts/finetune.py --teacher_model_name_or_path`."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import CLASSES, REPO_ROOT, load_script
from helpers import tiny_vit, tiny_vit_config
from transformers import TrainingArguments, ViTForImageClassification

from hf_afr import PrunerConfig, PruningMaskCallback, apply_masks, find_prunable_parameters
from hf_afr.checkpoint.masks_file import MASKS_NAME, load_masks
from hf_afr.distillation import (
    DistillationTrainer,
    TeacherLogitCache,
    check_same_labels,
    distillation_loss,
)

finetune = load_script("finetune")


def test_loss_matches_a_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1])
    alpha, t = 0.3, 2.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    kl, ce = 0.0, 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p = softmax([v / t for v in t_row])  # teacher's soft targets
        q = softmax([v / t for v in s_row])
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        ce -= math.log(softmax(s_row)[y])
    expected = alpha * t * t * kl / 2 + (1 - alpha) * ce / 2
    got = distillation_loss(student, teacher, labels, alpha, t)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # alpha = 0 is plain cross-entropy; a teacher equal to the student adds nothing.
    assert distillation_loss(student, teacher, labels, 0.0, t).item() == pytest.approx(ce / 2)
    assert distillation_loss(student, student, labels, 1.0, t).item() == pytest.approx(0, abs=1e-7)


def test_label_sets_must_match():
    same = tiny_vit_config(id2label={0: "a", 1: "b", 2: "c"})
    check_same_labels(same, tiny_vit_config(id2label={0: "a", 1: "b", 2: "c"}), "t")
    with pytest.raises(ValueError, match="other labels than the student"):
        check_same_labels(same, tiny_vit_config(id2label={0: "a", 1: "c", 2: "b"}), "t")


def test_logit_cache_runs_the_teacher_once_per_example():
    teacher, calls = tiny_vit(seed=3), []
    teacher.register_forward_hook(lambda m, args, out: calls.append(args))
    cache = TeacherLogitCache()
    x = torch.randn(4, 3, 32, 32)
    first = cache(teacher, x)
    again = cache(teacher, x[[2, 0]])
    assert len(calls) == 1 and (cache.hits, cache.misses) == (2, 4)
    with torch.no_grad():
        expected = teacher(pixel_values=x).logits
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(again, expected[[2, 0]])


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@pytest.mark.slow
def test_trainer_distils_with_masks_and_leaves_the_teacher_unchanged(tmp_path):
    student = tiny_vit(seed=0).train()
    params = find_prunable_parameters(student, PrunerConfig())
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) > 0.8 for n, p in params.items()}
    apply_masks(params, masks)
    teacher = tiny_vit(seed=3)
    before = copy.deepcopy(teacher.state_dict())
    args = TrainingArguments(
        tmp_path, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
        weight_decay=0.1, gradient_accumulation_steps=2, report_to="none", use_cpu=True,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=ListDataset(), teacher_model=teacher,
        alpha=0.7, temperature=3.0, callbacks=[PruningMaskCallback(masks)],
    )  # fmt: skip
    data = ListDataset()
    inputs = {"pixel_values": data.x[:4], "labels": data.y[:4]}
    with torch.no_grad():  # the training loss is the distillation loss of the two models
        expected = distillation_loss(
            student(pixel_values=inputs["pixel_values"]).logits,
            teacher(pixel_values=inputs["pixel_values"]).logits,
            inputs["labels"], 0.7, 3.0,
        )  # fmt: skip
        assert trainer.compute_loss(student, inputs).item() == pytest.approx(expected.item())
    trainer.train()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    weights = dict(student.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name].detach()[~mask]) == 0, name


def teacher_dir(tmp_path, labels) -> str:
    folder = tmp_path / "teacher"
    torch.manual_seed(5)
    config = tiny_vit_config(patch_size=4, id2label=dict(enumerate(labels)))
    ViTForImageClassification(config).save_pretrained(folder)
    return str(folder)


def distil_args(tiny_vit_dir, image_folder, out, tmp_path, teacher, *extra) -> list[str]:
    return [
        "--model_name_or_path", tiny_vit_dir, "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"), "--use_cpu", "--disable_tqdm", "true",
        "--train_dir", str(image_folder / "train"),
        "--validation_dir", str(image_folder / "validation"),
        "--method", "snip", "--sparsity", "0.8", "--num_batches", "2",
        "--scoring_batch_size", "4", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--do_train", "--do_eval", "--max_steps", "3", "--save_strategy", "no",
        "--teacher_model_name_or_path", teacher, "--distillation_alpha", "0.5",
        "--distillation_temperature", "2", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_finetune_script_with_a_teacher(tiny_vit_dir, image_folder, tmp_path):
    out = tmp_path / "out"
    teacher = teacher_dir(tmp_path, CLASSES)
    weights = ViTForImageClassification.from_pretrained(teacher).state_dict()
    extra = ("--cache_teacher_logits", "true", "--horizontal_flip", "false")
    metrics = finetune.main(distil_args(tiny_vit_dir, image_folder, out, tmp_path, teacher, *extra))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["weight_sparsity"] >= metrics["mask_sparsity"] > 0.79
    masks = load_masks(out / MASKS_NAME)
    trained = dict(ViTForImageClassification.from_pretrained(out).named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(trained[name].detach()[~mask]) == 0, name
    reloaded = ViTForImageClassification.from_pretrained(teacher).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in weights.items())
    assert json.loads((out / "all_results.json").read_text())["train_loss"] > 0


@pytest.mark.parametrize(
    "labels, extra, error",
    [
        (("cat", "owl", "dog"), (), "other labels than the student"),
        (CLASSES, ("--cache_teacher_logits", "true"), "needs unaugmented training data"),
        (CLASSES, ("--distillation_alpha", "1.5"), r"must be in \[0, 1\]"),
    ],
)
def test_bad_distillation_inputs_are_one_line_errors(
    labels, extra, error, tiny_vit_dir, image_folder, tmp_path
):
    teacher = teacher_dir(tmp_path, labels)
    args = distil_args(tiny_vit_dir, image_folder, tmp_path / "o", tmp_path, teacher, *extra)
    with pytest.raises(ValueError, match=error):
        finetune.main(args)


@pytest.mark.slow
def test_two_processes_distil_with_exact_masks(tiny_vit_dir, image_folder, tmp_path):
    """DDP through torchrun: each process holds the teacher; the pruned weights stay zero."""
    out, teacher = tmp_path / "out", teacher_dir(tmp_path, CLASSES)
    args = distil_args(tiny_vit_dir, image_folder, out, tmp_path, teacher)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(REPO_ROOT / "scripts" / "finetune.py"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world size: 2" in result.stdout + result.stderr
    masks = load_masks(out / MASKS_NAME)
    trained = dict(ViTForImageClassification.from_pretrained(out).named_parameters())
    assert all(torch.count_nonzero(trained[n].detach()[~m]) == 0 for n, m in masks.items())
    assert json.loads((out / "all_results.json").read_text())["train_loss"] > 0
