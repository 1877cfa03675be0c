"""`benchmarks/perf.py` runs every section on toy sizes, so the benchmark cannot rot.

No timing is asserted: only that each code path runs and produces its table and JSON.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

PERF = Path(__file__).resolve().parents[1] / "benchmarks" / "perf.py"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("hf_afr_perf", PERF)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy sizes: avoids thread stalls on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_section_runs_on_toy_sizes_and_writes_markdown_and_json(perf, one_thread, tmp_path):
    rt = perf.Runtime(torch.device("cpu"), torch.float32)
    markdown, results = perf.run(perf.TOY, rt, "toy", log=lambda *args, **kwargs: None)
    for key in perf.TOY.sections:
        assert f"## {perf.SECTIONS[key][0]}" in markdown
        assert results[key]["wall_s"] >= 0
    assert "ReFer/SNIP" in markdown and "(F + 2B) / (F + B)" in markdown
    modes = {row["mode"] for row in results["memory"]["rows"]}
    assert modes == set(perf.ALL_MEMORY_MODES)
    assert all(row["total"] > row["growth"] > 0 for row in results["memory"]["rows"])
    assert results["upkeep"]["rows"][0]["violations"] == 0
    assert set(results["scaling"]["series"]) == {"samples", "depth", "width"}
    assert "missing" in results["checkpoints"] or results["checkpoints"]["rows"]
    output = tmp_path / "perf.md"
    perf.write_outputs(markdown, results, str(output))
    assert output.read_text() == markdown
    assert json.loads(output.with_suffix(".json").read_text())["environment"]["settings"] == "toy"


@pytest.mark.slow
def test_the_gpu_suite_code_paths_run_on_cpu(perf, one_thread):
    rt = perf.Runtime(torch.device("cpu"), torch.float32)
    settings = perf.dataclasses.replace(
        perf.GPU,
        memory_shape="toy",
        memory_batches=[2],
        profile=("toy", 2),
        upkeep=[("toy", 2, 2, 1)],
    )
    markdown, results = perf.run(settings, rt, "gpu-toy", log=lambda *args, **kwargs: None)
    rows = results["gpu_scoring"]["rows"]
    assert {(r["dtype"], r["mode"]) for r in rows} == {
        (d, m) for d in ("float32", "bfloat16") for m in perf.GPU.memory_modes
    }
    assert all(r["peak"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert "peak vs train step" in markdown


@pytest.mark.parametrize("variant", ["afr_batched_vjp"])
def test_the_afr_variants_match_the_library_afr(perf, variant):
    rt = perf.Runtime(torch.device("cpu"), torch.float32)
    model = perf.build_model("toy", rt)
    batches = perf.make_batches(model, 2, 3, rt)
    library = perf.scorer(model, batches, "afr")()
    other = getattr(perf, variant)(model, batches)()
    for name in library:
        torch.testing.assert_close(other[name], library[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_memory_worker_in_a_fresh_process(perf):
    spec = {"shape": "toy", "batch_size": 2, "mode": "afr", "device": "cpu", "dtype": "float32"}
    row = perf._run_worker(spec, subprocess_=True)
    assert "error" not in row, row
    assert row["total"] > row["growth"] > 0


def test_linear_fit_and_verdicts(perf):
    fit = perf.linear_fit([1, 2, 4], [1.5, 2.5, 4.5])
    assert fit["slope"] == pytest.approx(1.0) and fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    assert perf.verdict(1.05, 1.10).startswith("met")
    assert perf.verdict(1.21, 1.10).startswith("missed by 10.0%")


def test_cli_arguments_parse_without_running(perf, monkeypatch):
    called = {}
    monkeypatch.setattr(
        perf, "run", lambda settings, rt, command: called.update(s=settings) or ("", {})
    )
    perf.main(["--quick", "--device", "cpu", "--sections", "profile"])
    assert called["s"].name == "quick" and called["s"].sections == ("profile",)
