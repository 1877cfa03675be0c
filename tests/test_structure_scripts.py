"""`--structure` in scripts/prune.py and scripts/finetune.py: a smaller model, trained with Trainer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script
from test_finetune_script import TRAINING, folder_args

from hf_afr import AFRPruner

finetune = load_script("finetune")
prune = load_script("prune")

pytestmark = pytest.mark.usefixtures("single_thread")


def args(model_dir, out, tmp_path, images, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--output_dir", str(out),
        "--cache_dir", str(tmp_path / "cache"), "--method", "afr", "--sparsity", "0.5",
        "--structure", "heads+mlp", "--round_to", "4", "--num_batches", "2",
        "--scoring_batch_size", "4", "--use_cpu", "--disable_tqdm", "true",
        *folder_args(images), *map(str, extra),
    ]  # fmt: skip


def test_prune_then_finetune_a_structurally_pruned_model(tiny_vit_dir, image_folder, tmp_path):
    pruned = tmp_path / "pruned"
    results = prune.main(args(tiny_vit_dir, pruned, tmp_path, image_folder))
    assert (
        abs(results["mask_sparsity"] - 0.5) < 0.05
        and results["macs_after"] < results["macs_before"]
    )
    config = json.loads((pruned / "config.json").read_text())
    assert all(units % 4 == 0 for units in config["layer_intermediate_sizes"])
    assert json.loads((pruned / "pruner_config.json").read_text())["structure"] == "heads+mlp"
    small = AFRPruner.from_pretrained(pruned).model
    out = tmp_path / "out"
    training = [*TRAINING, "--do_train", "--do_eval", "--max_steps", "3", "--learning_rate", "1e-2"]
    metrics = finetune.main(args(pruned, out, tmp_path, image_folder, *training))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    tuned = AFRPruner.from_pretrained(out)
    assert tuned.model.config.layer_num_attention_heads == config["layer_num_attention_heads"]
    before, after = dict(small.named_parameters()), dict(tuned.model.named_parameters())
    assert all(before[n].shape == p.shape for n, p in after.items())
    assert any(not torch.equal(before[n], p) for n, p in after.items())  # it trained
    assert "## Structure" in (out / "README.md").read_text()
