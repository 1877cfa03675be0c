"""The benchmark drivers run end to end on toy sizes, so they cannot rot (no timing asserts)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import tiny_vit
from transformers import ViTImageProcessor

from hf_afr.structure.prune import remove_dead_units

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
    combination = "refer_snip_log_z"
    results = replicate.main(
        [
            "--parts", "main", "controls", "typefaces",
            "--tasks", "digits", "--seeds", "0", "--sparsities", "0.9",
            "--control_sparsities", "0.9", "--typefaces_sparsities", "0.8",
            "--methods", "dense", "snip", "refer", "synflow", combination,
            "--controls", "shuffle", "invert",
            "--ablation", "--epochs", "1", "--workers", "1",
            "--model", str(model_dir), "--output_dir", str(out),
        ]
    )  # fmt: skip
    runs = {
        (r["task"], r["method"], r["control"], r["feature_token"], r["sparsity"]) for r in results
    }
    assert len(runs) == len(results)  # no run twice
    digits = {(m, c, t, s) for task, m, c, t, s in runs if task == "digits"}
    assert digits == {
        ("dense", None, "cls", 0.0),
        *((m, None, "cls", 0.9) for m in ("snip", "refer", "synflow", combination)),
        ("refer", None, "mean", 0.9),  # the token-mean ablation
        *((m, c, "cls", 0.9) for m in ("snip", "refer") for c in ("shuffle", "invert")),
        (combination, "shuffle", "cls", 0.9),
    }
    typefaces = {(m, c, s) for task, m, c, t, s in runs if task == "typefaces"}
    assert typefaces == {  # every criterion and its controls at the task's sparsity
        ("dense", None, 0.0),
        *((m, None, 0.8) for m in ("snip", "refer", "synflow", combination)),
        *((m, c, 0.8) for m in ("snip", "refer") for c in ("shuffle", "invert")),
        (combination, "shuffle", 0.8),
    }
    by_key = {(r["task"], r["method"], r["control"], r["feature_token"]): r for r in results}
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["method"] != "dense":
            assert r["sparsity_measured"] == pytest.approx(r["sparsity"], abs=1e-4)
            assert 0.0 <= r["shrink"]["macs_reduction"] < 1.0
            assert len(r["shrink"]["mlp_units_removed"]) == 2
    # The controls reach the masks: shuffling keeps ReFer's per-tensor kept counts and moves
    # the kept weights (what shrinking removes changes); inverting changes the counts.
    refer, shuffled, inverted = (
        by_key["digits", "refer", c, "cls"] for c in (None, "shuffle", "invert")
    )
    assert shuffled["kept_per_tensor"] == refer["kept_per_tensor"]
    assert shuffled["shrink"] != refer["shrink"]
    assert inverted["kept_per_tensor"] != refer["kept_per_tensor"]
    md = (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0
    for row in (
        "| refer (token mean) |", "| snip [shuffle] |", "| refer [invert] |",
        f"| digits | {combination} − refer |", "| digits | snip − snip [invert] |",
        "#### typefaces", "| synflow |", "Exact shrinking of the masks",
    ):  # fmt: skip
        assert row in md, row


def test_replication_benchmark_resumes_an_interrupted_grid(tmp_path, capsys):
    replicate = load("replicate")
    model_dir = tmp_path / "model"
    tiny_vit(num_labels=3).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    out = tmp_path / "results"
    argv = [
        "--parts", "main", "--tasks", "digits", "--seeds", "0", "--sparsities", "0.9",
        "--methods", "dense", "snip", "--epochs", "1", "--workers", "1",
        "--model", str(model_dir), "--output_dir", str(out),
    ]  # fmt: skip
    first = replicate.main(argv)
    assert not (out / "results.partial.jsonl").exists()  # removed once results.json is written
    # An interrupted grid: the dense run finished (marked, to see that it is not rerun), the
    # snip run was being written when the process died, results.json was never written.
    (out / "results.json").unlink()
    dense = next(r for r in first if r["method"] == "dense")
    (out / "results.partial.jsonl").write_text(
        json.dumps({**dense, "accuracy": 0.125}) + "\n" + '{"task": "dig'
    )
    capsys.readouterr()
    resumed = {r["method"]: r for r in replicate.main([*argv, "--resume"])}
    assert "2 runs on 1 worker(s), 1 already done" in capsys.readouterr().out
    assert resumed["dense"]["accuracy"] == 0.125  # kept, not rerun
    assert resumed["snip"]["sparsity_measured"] == pytest.approx(0.9, abs=1e-4)
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 2 and saved["meta"]["resumed"] == 1
    assert "1 from an earlier invocation, 1 more in" in (out / "results.md").read_text()
    assert not (out / "results.partial.jsonl").exists()
    # A finished grid grown by one method: only the new runs are run.
    grown = replicate.main([*argv, "--methods", "dense", "snip", "refer", "--resume"])
    assert "3 runs on 1 worker(s), 2 already done" in capsys.readouterr().out
    assert {r["method"]: r["accuracy"] for r in grown}["dense"] == 0.125
    assert "wall time" in (out / "results.md").read_text()


def test_combination_study_runs_on_a_toy_size_and_never_reads_the_test_split(tmp_path):
    study = load("combination_study")
    data = study.validation_task("digits", seed=0)
    full = study.replicate.load_task("digits")
    assert len(data["ytr"]) + len(data["yte"]) == len(full["ytr"])  # both from the train split
    train_rows = {tuple(x.flatten()[::37].tolist()) for x in full["xtr"]}
    assert all(tuple(x.flatten()[::37].tolist()) in train_rows for x in data["xte"][:20])
    model_dir = tmp_path / "model"
    tiny_vit(num_labels=3).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    out = tmp_path / "results"
    results = study.main(
        [
            "--quick", "--candidates", "snip", "refer", "log_sum", "refer_budget_snip_rank",
            "--epochs", "1", "--workers", "1", "--model", str(model_dir), "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert sorted(r["candidate"] for r in results) == sorted(
        ["snip", "refer", "log_sum", "refer_budget_snip_rank"]
    )
    assert all(r["sparsity_measured"] == pytest.approx(0.98, abs=1e-4) for r in results)
    md = (out / "combination.md").read_text()
    assert "| refer_budget_snip_rank |" in md and "digits 98%" in md
    assert len(json.loads((out / "combination.json").read_text())["runs"]) == 4


def test_dropping_dead_mlp_units_leaves_masked_fine_tuning_unchanged():
    """The grid fine-tunes without the MLP units whose fc2 column is pruned: same model after."""
    import copy

    import torch

    replicate = load("replicate")
    model = tiny_vit(num_labels=3)
    generator = torch.Generator().manual_seed(0)
    masks = {}
    for name, p in model.named_parameters():
        if ".layers." in name and name.endswith("weight") and p.dim() == 2:
            masks[name] = torch.rand(p.shape, generator=generator) > 0.5
    for layer in range(2):  # half the hidden units dead: their fc2 column fully pruned
        masks[f"vit.layers.{layer}.mlp.fc2.weight"][:, ::2] = False
    masks["vit.layers.1.mlp.fc1.weight"][5] = False  # an empty fc1 row on a live unit stays
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    data = {
        "xtr": torch.randn(24, 3, 32, 32, generator=generator),
        "ytr": torch.randint(0, 3, (24,), generator=generator),
    }
    full, compact = copy.deepcopy(model), copy.deepcopy(model)
    compact_masks = remove_dead_units(compact, masks)
    assert compact.vit.layers[0].mlp.fc1.out_features == 32
    assert compact_masks["vit.layers.0.mlp.fc2.weight"].shape == (32, 32)
    assert compact_masks["vit.layers.1.mlp.fc1.weight"].shape == (32, 32)
    for m, mk in ((full, masks), (compact, compact_masks)):
        replicate.fine_tune(m, data, seed=0, epochs=2, batch_size=8, lr=1e-2, masks=mk)
    x = torch.randn(5, 3, 32, 32, generator=generator)
    with torch.no_grad():
        expected, actual = full.eval()(pixel_values=x).logits, compact.eval()(pixel_values=x).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, model(pixel_values=x).logits, atol=1e-3)  # it trained
