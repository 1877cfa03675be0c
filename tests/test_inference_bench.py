"""`hf-afr bench` and `benchmarks/inference.py` run end to end on toy sizes (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import tiny_vit
from transformers import ViTImageProcessorPil

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pruned")
    pruner = AFRPruner(tiny_vit(num_labels=10), PrunerConfig(method="magnitude", sparsity=0.95))
    pruner.prune()
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    pruner.save_pretrained(folder, image_processor=processor, model_card=False)
    return folder


def test_cli_bench_prints_end_to_end_per_layer_and_shrink_tables(pruned_dir, tmp_path, capsys):
    output = tmp_path / "bench.md"
    argv = ["bench", str(pruned_dir), "--batch-size", "1", "2", "--rounds", "1", "--threads", "1"]
    assert main([*argv, "--layer-rounds", "1", "--output", str(output)]) == 0
    text = capsys.readouterr().out
    for variant in ("dense", "shrunk", "converted"):
        assert f"| 1 | {variant} |" in text and f"| 2 | {variant} |" in text
    assert "| vit.layers.0.attention.q_proj | " in text and "| classifier | 10x32 | 0.0% |" in text
    assert "batch 1: kernel (speed-up) | batch 2: kernel (speed-up)" in text
    assert "Shrinking (exact):" in text and "| vit.layers.0.mlp | mlp |" in text
    assert output.read_text().strip() == text.strip()
    data = json.loads(output.with_suffix(".json").read_text())
    assert [r["batch_size"] for r in data] == [1, 2]
    assert data[0]["variants"]["converted"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "missing"),
        (["--dtype", "float8"], "--dtype must be float32, float16 or bfloat16"),
        (["--kernels", "ell"], "Unknown kernels"),
        (["--rounds", "0"], "must be positive integers"),
    ],
)
def test_cli_bench_reports_bad_input_on_one_line(pruned_dir, tmp_path, capsys, extra, message):
    model = str(tmp_path / "missing") if not extra else str(pruned_dir)
    assert main(["bench", model, "--batch-size", "1", "--threads", "1", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hf-afr bench: error:") and len(err.strip().splitlines()) == 1
    assert message in err


def test_inference_benchmark_quick_mode_writes_its_tables(pruned_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("inference_bench", BENCHMARKS / "inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference_bench"] = module
    spec.loader.exec_module(module)
    argv = [
        "--quick",
        "--output_dir",
        str(tmp_path),
        "--model_dir",
        str(pruned_dir),
        "--threads",
        "1",
    ]
    results = module.main(
        [
            *argv,
            "--sparsities",
            "0.95",
            "--batch_sizes",
            "1",
            "--rounds",
            "1",
            "--layer_rounds",
            "1",
        ]
    )
    assert [(r["structure"], r["batch"]) for r in results["vit"]] == [
        ("random", 1),
        ("2:4", 1),
        ("afr-like", 1),
    ]
    assert all(r["max_abs_diff"] < 1e-4 for r in results["vit"])
    assert results["main"]["shrunk"]["same_predictions"]
    assert {r["method"] for r in results["criteria"]} == {"magnitude", "afr"}
    text = (tmp_path / "inference.md").read_text()
    assert "## 1. quick shape" in text and "## 2. The main job's output" in text
    assert "## 3. How much each criterion's masks shrink" in text
    assert json.loads((tmp_path / "inference.json").read_text())["meta"]["quick"] is True
    assert "Incomplete run" not in text
    module.main(["--tabulate_only", "--output_dir", str(tmp_path)])
    assert (tmp_path / "inference.md").read_text() == text


@pytest.mark.parametrize("flag", ["--rounds", "--layer_rounds", "--main_rounds"])
def test_inference_benchmark_refuses_rounds_below_one(flag, capsys):
    spec = importlib.util.spec_from_file_location("inference_bench", BENCHMARKS / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args([flag, "0"])
    assert exit_info.value.code == 2
    assert f"{flag} must be a positive integer" in capsys.readouterr().err
