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
    card = (out / "README.md").read_text()
    assert "## Structure" in card and "## Measured speed" in card
    assert "the speed of the dense model" in (pruned / "README.md").read_text()


def test_the_speed_benchmark_writes_its_table(tmp_path):
    speed = load_script("../benchmarks/structured_speed")
    text = speed.main(["--quick", "--output", str(tmp_path / "speed.md")])
    assert (tmp_path / "speed.md").read_text() == text
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| inference") or line.startswith("| fine")
    ]
    assert [row.split("|")[2].strip() for row in rows] == [
        "dense",
        "heads+mlp 50%",
        "heads+mlp 75%",
        "dense",
        "heads+mlp 50%",
    ]
    assert ">= 1.8x" in rows[1] and ">= 3.0x" in rows[2] and ">= 1.7x" in rows[4]


def test_the_ranking_benchmark_compares_the_three_rankings(tmp_path):
    ranking = load_script("../benchmarks/structured_ranking")
    argv = [
        "--sparsities",
        "0.5",
        "--methods",
        "magnitude",
        "snip",
        "--train_images",
        "300",
        "--test_images",
        "100",
    ]
    text = ranking.main([*argv, "--output", str(tmp_path / "ranking.md")])
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| magnitude")]
    assert [row[3].strip() for row in rows] == ["per_kind", "per_layer", "pooled"]
    assert rows[0][4].strip() == rows[0][5].strip() == "50%"  # per kind: equal fractions
    assert all(0.0 <= float(row[6]) <= 1.0 for row in rows)
    snip = [line.split("|") for line in text.splitlines() if line.startswith("| snip")]
    assert len(snip) == 3
