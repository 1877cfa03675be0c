"""The benchmark drivers run end to end on toy sizes, so they cannot rot (no timing asserts)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import tiny_vit
from transformers import ViTImageProcessor

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_paper_setting_dry_run_fills_the_paper_tables(tmp_path):
    paper = load("paper_setting")
    out = tmp_path / "runs"
    table = paper.main(
        [
            "--output_dir",
            str(out),
            "--dry_run",
            "--launcher",
            "inprocess",
            "--datasets",
            "cifar100",
            "oxford-pets",
            "--sparsities",
            "0.95",
            "--methods",
            "snip",
            "afr",
        ]
    )
    assert "| supervised | cifar100 | afr |" in table and "/ 72.90" in table
    assert "| oxford-pets | 95% |" in table
    raw = json.loads((out / "paper_results.json").read_text())
    assert len(raw) == 2 + 4  # cifar100 x 2 methods (supervised), pets x 2 methods x 2 models
    assert all(0.0 <= acc[0] <= 1.0 for acc in raw.values())
    # Finished runs are skipped: a second call only collects.
    assert (
        paper.main(
            [
                "--output_dir",
                str(out),
                "--collect_only",
                "--datasets",
                "cifar100",
                "--sparsities",
                "0.95",
                "--methods",
                "snip",
                "afr",
            ]
        ).count("—")
        == 0
    )


def test_paper_setting_dry_run_with_the_deit_and_dinov2_models(tmp_path):
    paper = load("paper_setting")
    out = tmp_path / "runs"
    table = paper.main(
        [
            "--output_dir", str(out), "--dry_run", "--launcher", "inprocess",
            "--datasets", "oxford-pets", "--methods", "afr", "--models", "deit", "dinov2",
        ]
    )  # fmt: skip
    assert "afr deit | afr dinov2" in table
    raw = json.loads((out / "paper_results.json").read_text())
    assert sorted(raw) == ["deit/oxford-pets/0.8/afr", "dinov2/oxford-pets/0.8/afr"]
    dinov2 = out / "dinov2" / "oxford-pets" / "afr-s0.8-seed42"
    assert json.loads((dinov2 / "config.json").read_text())["model_type"] == "dinov2"
    assert json.loads((dinov2 / "pruner_config.json").read_text())["feature_token"] == (
        "cls_patch_mean"
    )


def test_paper_setting_builds_the_real_commands():
    paper = load("paper_setting")
    args = paper.parse_args(["--output_dir", "o"])
    datasets, models = paper.read_table("datasets.csv"), paper.read_table("models.csv")
    runs = paper.plan_runs(args, datasets, models)
    general = [r for r in runs if datasets[r.dataset]["group"] == "general"]
    fine = [r for r in runs if datasets[r.dataset]["group"] == "fine-grained"]
    assert len(general) == 3 * 3 * 3 and len(fine) == 10 * 2 * 3  # the paper's grid by default
    assert {"deit", "dinov2"} <= set(models)
    assert models["dinov2"]["hub_id"] == "facebook/dinov2-base"
    assert models["deit"]["hub_id"] == "facebook/deit-base-patch16-224"
    argv = paper.finetune_args(general[0], args, datasets, models, None)
    assert argv[argv.index("--model_name_or_path") + 1] == "google/vit-base-patch16-224"
    assert argv[argv.index("--dataset_name") + 1] == "uoft-cs/cifar10"
    assert argv[argv.index("--validation_split_name") + 1] == "test"


def test_replication_benchmark_runs_on_a_toy_size(tmp_path):
    replicate = load("replicate")
    model_dir = tmp_path / "model"
    tiny_vit(num_labels=3).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    out = tmp_path / "results"
    results = replicate.main(
        [
            "--tasks",
            "digits",
            "--seeds",
            "0",
            "--sparsities",
            "0.9",
            "--methods",
            "dense",
            "snip",
            "afr",
            "--epochs",
            "1",
            "--workers",
            "1",
            "--model",
            str(model_dir),
            "--output_dir",
            str(out),
        ]
    )
    assert {r["method"] for r in results} == {"dense", "snip", "afr"}
    assert len(results) == 1 + 2 + 1  # dense, snip, afr (cls), afr (token-mean ablation)
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] != "dense":
            assert r["sparsity_measured"] == pytest.approx(0.9, abs=1e-4)
            assert 0.0 <= r["shrink"]["macs_reduction"] < 1.0
            assert len(r["shrink"]["mlp_units_removed"]) == 2
    assert (out / "results.png").stat().st_size > 0
    assert "| afr (token mean) |" in (out / "results.md").read_text()
    assert "Exact shrinking of the masks" in (out / "results.md").read_text()
