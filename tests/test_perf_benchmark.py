"""`benchmarks/perf.py` (package `benchmarks/perf_suite/`): every section runs at toy sizes,
and its results and table have real content; a section that cannot measure fails the run.

No timing is compared against a target (the machine is shared): only that times are finite
and positive, that the tables have their rows, and what does not depend on timing (peak
bytes, checkpoint sizes, masks kept, scores equal to an independent AFR).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from perf_suite import driver, registry  # noqa: E402
from perf_suite.common import METHODS, Runtime, build_model, make_batches, scorer, verdict  # noqa: E402
from perf_suite.memory import ALL_MODES, measure_row, trace_peak_growth  # noqa: E402
from perf_suite.profile import PROFILE_ROWS  # noqa: E402
from perf_suite.scaling import linear_fit  # noqa: E402
from perf_suite.timing import afr_batched_vjp  # noqa: E402

CPU = Runtime(torch.device("cpu"), torch.float32)


def silent(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy sizes: avoids thread stalls on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(one_thread):
    """`toy(key)`: (markdown, result) of one section at the toy preset, run once per module."""
    cache = {}

    def get(key):
        if key not in cache:
            markdown, results = driver.run((key,), "toy", CPU, "toy", log=silent)
            cache[key] = markdown, results[key]
        return cache[key]

    return get


def table_rows(markdown: str, first_cell: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(f"| {first_cell}")]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_timing_section(toy):
    markdown, result = toy("timing")
    (row,) = result["rows"]
    assert set(row["times"]) == {*METHODS, "afr, batched VJP"}
    assert all(len(t) == row["rounds"] and all(map(positive, t)) for t in row["times"].values())
    for key in ("refer/snip", "afr/snip", "afr batched/snip", "separate/snip"):
        assert positive(row[key]["median"]), (key, row[key])
    assert row["refer/snip"]["low"] <= row["refer/snip"]["median"] <= row["refer/snip"]["high"]
    assert len(table_rows(markdown, "toy (hidden 32, 2 layers")) == 1


def test_profile_section(toy):
    markdown, result = toy("profile")
    stages = result["stages"]
    # Each criterion shows time in its own labelled stages and none in the others'.
    assert stages["snip"]["backward: loss"] > 0 and stages["snip"]["backward: refer"] == 0
    assert stages["refer"]["backward: refer"] > 0 and stages["refer"]["backward: loss"] == 0
    assert stages["afr"]["backward: loss"] > 0 and stages["afr"]["backward: refer"] > 0
    assert stages["refer"]["SVD forward"] > 0 and stages["snip"]["SVD forward"] == 0
    for method in METHODS:
        s = stages[method]
        assert s["forward"] > 0 and s["micro-batch feature pass"] == 0
        assert s["total"] >= s["forward"] + s["backward: loss"] + s["backward: refer"]
        assert 0 < s["matmul share of CPU time"] < 1
    assert stages["afr"]["z-score stage, measured apart"] > 0
    assert 1 < result["floor afr/snip"] < 2 and positive(result["engine afr/snip"])
    for label, nested in PROFILE_ROWS:
        assert len(table_rows(markdown, f"&nbsp;&nbsp;of which {label}" if nested else label)) == 1


def test_memory_section(toy):
    markdown, result = toy("memory")
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == list(ALL_MODES)
    assert all(r["total"] > r["growth"] > 0 for r in rows.values())
    assert len({r["resident"] for r in rows.values()}) == 1  # same weights and batch
    # The engine alone peaks at most as high as the whole call it is cut from; bytes held by
    # tensors do not depend on timing, so the effect of micro-batching is exact.
    assert rows["afr gradients"]["growth"] <= rows["afr"]["growth"]
    cut = "afr gradients, micro-batch + checkpointing"
    assert rows[cut]["growth"] <= rows["afr, micro-batch + checkpointing"]["growth"]
    assert rows["afr, micro-batch + checkpointing"]["growth"] < rows["afr"]["growth"]
    assert rows["snip"]["growth"] < rows["afr"]["growth"]
    # The process's peak RSS covers the whole call: no RSS figure for a cut at the engine.
    assert rows["afr gradients"]["rss_growth"] is None
    assert len(table_rows(markdown, "4 |")) == len(ALL_MODES)


def test_upkeep_section(toy):
    markdown, result = toy("upkeep")
    (row,) = result["rows"]
    assert row["violations"] == 0
    assert all(map(positive, row["plain"] + row["enforced"]))
    assert all(math.isfinite(v) and v >= 0 for v in row["direct"].values())
    assert math.isfinite(row["overhead"]) and row["overhead"] > -1
    assert len(table_rows(markdown, "toy (hidden 32")) == 1


def test_scaling_section(toy):
    markdown, result = toy("scaling")
    series = result["series"]
    assert set(series) == {"samples", "depth", "width"}
    assert sorted({p["x"] for p in series["samples"]["points"]}) == [2, 4]  # batches x batch 2
    for s in series.values():
        assert len(s["points"]) == 4 and all(positive(p["s"]) for p in s["points"])
        assert set(s["fits"]) == {"snip", "afr"}
        assert all(math.isfinite(f["slope"]) and f["r2"] <= 1 for f in s["fits"].values())
        assert f"Series: {s['label']}" in markdown
    depth = sorted(series["depth"]["points"], key=lambda p: p["depth"])
    assert depth[0]["x"] < depth[-1]["x"]  # more layers, more parameters
    assert markdown.count("Least-squares line fits: snip: t = ") == 3


def test_criteria_section(toy):
    markdown, result = toy("criteria")
    names = ["snip", "refer", "afr", "grasp", "fisher", "synflow (5 rounds)", "synflow (2 rounds)"]
    assert list(result["times"]) == names
    assert all(
        len(t) == result["rounds"] and all(map(positive, t)) for t in result["times"].values()
    )
    snip = result["ratios"]["snip"]
    assert snip["median"] == snip["low"] == snip["high"] == 1.0
    for name in names:
        r = result["ratios"][name]
        assert positive(r["median"]) and r["low"] <= r["median"] <= r["high"], name
        assert len(table_rows(markdown, f"{name} |")) == 1, name
    assert result["peak_memory"] == dict.fromkeys(names)  # CPU: not measured, said so
    assert markdown.count("n/a (CPU)") == len(names)


@pytest.mark.slow
def test_checkpoints_section(toy):
    markdown, result = toy("checkpoints")
    (row,) = result["rows"]
    assert row["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert row["compact"] < 0.15 * row["dense"]  # sizes do not depend on timing
    assert row["bound"] <= row["compact"] <= 1.10 * row["bound"]
    assert all(map(positive, [*row["save"].values(), *row["load"].values()]))
    assert len(table_rows(markdown, "90% |")) == 1


def test_a_missing_checkpoint_script_fails_the_run_after_saving_the_sections_before(
    one_thread, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, "checkpoint_size", None)  # `import checkpoint_size` fails
    output = tmp_path / "perf.md"
    argv = ["--preset", "toy", "--sections", "scaling", "checkpoints", "--output", str(output)]
    with pytest.raises(ImportError, match="checkpoint_size"):
        driver.main(argv)
    assert "## 5. Scaling of the scoring time" in output.read_text()
    assert "## 6." not in output.read_text()
    assert set(json.loads(output.with_suffix(".json").read_text())) == {"environment", "scaling"}


@pytest.mark.slow
def test_gpu_suite_code_paths_run_on_cpu(toy):
    markdown, result = toy("gpu_scoring")
    modes = registry.get_section("gpu_scoring").settings("gpu").modes
    assert [(r["dtype"], r["mode"]) for r in result["rows"]] == [
        (d, m) for d in ("float32", "bfloat16") for m in modes
    ]
    assert all(positive(r["peak"]) and positive(r["images_per_s"]) for r in result["rows"])
    assert len(table_rows(markdown, "bfloat16 | 2 |")) == len(modes)


@pytest.mark.slow
def test_memory_worker_in_a_fresh_process_and_its_failure():
    spec = {"shape": "toy", "batch_size": 2, "device": "cpu", "dtype": "float32"}
    row = measure_row({**spec, "mode": "afr gradients"}, fresh_process=True)
    assert row["total"] > row["growth"] > 0 and row["rss_growth"] is None
    with pytest.raises(RuntimeError, match="Unknown memory mode 'nonsense'"):
        measure_row({**spec, "mode": "nonsense"}, fresh_process=True)


def _memory_event(ts, total, nbytes, device_type=0):
    args = {"Total Allocated": total, "Bytes": nbytes, "Device Type": device_type}
    return {"name": "[memory]", "ph": "i", "ts": ts, "args": args}


def test_trace_peak_growth_on_a_hand_written_trace():
    events = [
        _memory_event(1, 1100, 100),  # 1000 bytes held before the call
        _memory_event(3, 1400, 300),
        {"name": "hf_afr::backward[loss]", "ph": "X", "ts": 2, "dur": 2},
        {"name": "hf_afr::backward[refer]", "ph": "X", "ts": 4, "dur": 2},  # ends at 6
        _memory_event(5, 1200, -200),
        _memory_event(7, 1900, 700),  # after the engine: the z-score stage
        _memory_event(8, 5000, 5000, device_type=1),  # another device
    ]
    assert trace_peak_growth(events, 0, engine_only=False) == 900
    assert trace_peak_growth(events, 0, engine_only=True) == 400
    assert trace_peak_growth(events[::-1], 0, engine_only=True) == 400  # order-free
    with pytest.raises(RuntimeError, match="hf_afr::backward"):
        trace_peak_growth([e for e in events if e["ph"] == "i"], 0, engine_only=True)


def test_batched_vjp_afr_matches_the_library_afr():
    model = build_model("toy", CPU)
    batches = make_batches(model, 2, 3, CPU)
    library = scorer(model, batches, "afr")()
    other = afr_batched_vjp(model, batches)()
    assert set(other) == set(library)
    for name in library:
        torch.testing.assert_close(other[name], library[name], rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_linear_fit_and_verdicts():
    fit = linear_fit([1, 2, 4], [1.5, 2.5, 4.5])
    assert fit["slope"] == pytest.approx(1.0) and fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0) and fit["max_rel_residual"] == pytest.approx(0.0)
    assert verdict(1.05, 1.10).startswith("met")
    assert verdict(1.21, 1.10).startswith("missed by 10.0%")


def test_registry_sections_load_with_the_presets_of_their_suites():
    assert registry.suite_sections("cpu") == (
        "timing",
        "profile",
        "memory",
        "upkeep",
        "scaling",
        "checkpoints",
        "families",
        "criteria",
    )
    assert registry.suite_sections("gpu") == ("gpu_scoring", "profile", "upkeep")
    for section in registry.SECTIONS:
        needed = {"toy"}
        if "cpu" in section.suites:
            needed |= {"full", "quick"}
        if "gpu" in section.suites:
            needed.add("gpu")
        assert needed <= set(section.load().PRESETS), section.key
    with pytest.raises(ValueError, match="'timing' has no 'gpu' preset"):
        driver.run(("timing",), "gpu", CPU, log=silent)
    with pytest.raises(ValueError, match="Unknown section 'nope'"):
        registry.get_section("nope")


def test_cli_presets_and_default_outputs(capsys):
    args = driver.parse_args([])
    assert (args.preset, Path(args.output).name, args.suite) == ("full", "perf.md", "cpu")
    args = driver.parse_args(["--quick", "--sections", "profile", "memory"])
    assert (args.preset, args.output, args.sections) == ("quick", None, ["profile", "memory"])
    args = driver.parse_args(["--suite", "gpu", "--device", "cuda"])
    assert (args.preset, Path(args.output).name) == ("gpu", "perf-gpu.md")
    for argv, message in (
        (["--quick", "--preset", "full"], "--quick and --preset full disagree"),
        (["--sections", "nope"], "argument --sections: invalid choice: 'nope'"),
    ):
        with pytest.raises(SystemExit) as exit_:
            driver.parse_args(argv)
        assert exit_.value.code == 2  # argparse's usage error, not a crash or a success
        assert message in capsys.readouterr().err.splitlines()[-1]


def test_main_writes_markdown_and_json(one_thread, tmp_path):
    output = tmp_path / "perf.md"
    driver.main(["--preset", "toy", "--sections", "profile", "--output", str(output)])
    markdown = output.read_text()
    assert markdown.startswith("# hf_afr performance (toy run)")
    assert "## 2. Where the scoring time goes" in markdown and "## 1." not in markdown
    results = json.loads(output.with_suffix(".json").read_text())
    assert set(results) == {"environment", "profile"}
    assert results["environment"]["settings"] == "toy"
    assert results["profile"]["settings"] == {"shape": "toy", "batch_size": 4}
    assert results["profile"]["stages"]["afr"]["total"] > 0


@pytest.mark.slow
def test_the_launcher_script_runs_and_fails_loudly(tmp_path):
    script = str(BENCHMARKS / "perf.py")
    output = tmp_path / "perf.md"
    command = [sys.executable, script, "--preset", "toy", "--threads", "1", "--sections"]
    done = subprocess.run(
        command + ["scaling", "--output", str(output)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "## 5. Scaling of the scoring time" in output.read_text()
    assert "Series: scoring samples (toy)" in done.stdout
    done = subprocess.run(
        command + ["checkpoints", "--preset", "gpu"], capture_output=True, text=True
    )
    assert done.returncode != 0 and "'checkpoints' has no 'gpu' preset" in done.stderr


def test_families_section(toy):
    markdown, result = toy("families")
    assert [row["model"] for row in result["rows"]] == ["ViT", "DeiT", "Swin"]
    assert len(result["times"]) == 9 and all(len(t) == 2 for t in result["times"].values())
    assert all(t > 0 for ts in result["times"].values() for t in ts)
    vit, deit, swin = result["rows"]
    assert vit["refer/snip vs vit"] == vit["afr/snip vs vit"] == 1.0
    for row in (deit, swin):
        for method in ("refer", "afr"):
            expected = row[f"{method}/snip"]["median"] / vit[f"{method}/snip"]["median"]
            assert row[f"{method}/snip vs vit"] == pytest.approx(expected)
    assert [len(table_rows(markdown, f"{name} |")) for name in ("ViT", "DeiT", "Swin")] == [1, 1, 1]
    assert "| reference |" in table_rows(markdown, "ViT |")[0]
