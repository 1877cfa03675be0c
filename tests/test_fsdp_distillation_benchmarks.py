"""benchmarks/fsdp_upkeep.py and benchmarks/distillation_recipe.py on toy sizes (no timing asserts)."""

from __future__ import annotations

import json

import pytest
from test_benchmarks import BENCHMARKS, load


@pytest.mark.slow
def test_fsdp_upkeep_runs_both_paths_on_a_toy_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # spawned workers import the module by name
    upkeep = load("fsdp_upkeep")
    out = tmp_path / "upkeep.md"
    args = ["--shape", "toy", "--rounds", "2", "--steps", "1", "--output", str(out)]
    text = upkeep.main(args)
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith(("| DDP", "| FSDP2"))]
    assert len(rows) == 2
    assert all(row.endswith("| 0 |") for row in rows)  # no pruned weight revived on either path


@pytest.mark.slow
def test_distillation_recipe_runs_and_resumes(tmp_path, capsys):
    recipe = load("distillation_recipe")
    args = [
        "--epochs", "0.06", "--seeds", "0", "--settings", "unstructured 95%",
        "--num_batches", "1", "--output", str(tmp_path / "d.md"),
        "--work_dir", str(tmp_path / "work"),
    ]  # fmt: skip
    text = recipe.main(args)
    runs = json.loads((tmp_path / "d.json").read_text())["runs"]
    assert [(r["setting"], r.get("teacher")) for r in runs] == [
        ("dense teacher", None),
        ("unstructured 95%", False),
        ("unstructured 95%", True),
    ]
    student = runs[1]
    assert student["nonzero_parameters"] < 0.5 * student["parameters"]
    assert "| unstructured 95% |" in text
    assert "| 1/1 |" in text or "| 0/1 |" in text  # one paired seed
    capsys.readouterr()
    recipe.main([*args, "--resume"])  # everything is done: nothing runs again
    assert capsys.readouterr().out == ""
    again = json.loads((tmp_path / "d.json").read_text())["runs"]
    assert again == runs
