"""The structured-pruning accuracy grid's plumbing: its plan, resuming, tables and goal count."""

import json

import pytest
from test_benchmarks import load

# Accuracy of each method per seed (one task, one sparsity): afr beats magnitude on seeds 0 and
# 2 (2/3, the goal), snip only on seed 1 (1/3), ties random on seed 0 (a tie is not a win).
ACCURACY = {
    "dense": (0.9, 0.9, 0.9),
    "afr": (0.80, 0.70, 0.60),
    "magnitude": (0.75, 0.72, 0.50),
    "snip": (0.85, 0.60, 0.65),
    "refer": (0.70, 0.70, 0.70),
    "random": (0.80, 0.50, 0.40),
    "afr_unstructured": (0.90, 0.90, 0.90),
}


def fake_run(job):
    """A run with fixed accuracies and made-up measurements (no model is touched)."""
    result = {**job, "accuracy": ACCURACY[job["method"]][job["seed"]], "seconds": 0.0}
    if job["method"] != "dense":
        result |= {"speedup": 2.0, "linear_weights_kept": 0.5}
    if job["method"] == "afr_unstructured":
        result |= {"structured_speedup": 2.0, "unstructured_sparsity": 0.97}
    elif job["method"] != "dense":
        result |= {"heads": [2, 1], "mlp_units": [10, 20]}
    return result


def test_plan_orders_whole_paired_cells_seed_by_seed(capsys):
    grid = load("structured_grid")
    args = grid.parse_args([])
    jobs = grid.plan(args)
    # 3 tasks x 3 seeds x (dense + 3 sparsities x 6 methods)
    assert len(jobs) == 3 * 3 * (1 + 3 * 6) == 171
    # Seed by seed; within a seed the goal's comparisons (afr, magnitude, snip) first.
    assert [j["seed"] for j in jobs] == sorted(j["seed"] for j in jobs)
    for seed in (0, 1, 2):
        phase = [
            j["method"] in ("dense", "afr", "magnitude", "snip") for j in jobs if j["seed"] == seed
        ]
        assert phase == sorted(phase, reverse=True) and sum(phase) == 3 * (1 + 3 * 3)
    keys = {(j["task"], j["seed"], j["method"], j["sparsity"]) for j in jobs}
    assert len(keys) == len(jobs)
    assert ("cyrillic", 2, "afr_unstructured", 0.7) in keys and ("digits", 0, "dense", 0) in keys
    assert grid.main(["--dry_run", "--tasks", "digits", "--seeds", "0"]) == []
    assert "19 runs" in capsys.readouterr().out


def test_grid_resumes_and_counts_paired_wins(tmp_path, capsys):
    grid = load("structured_grid")
    out = tmp_path / "results"
    argv = ["--tasks", "digits", "--sparsities", "0.5", "--workers", "1", "--output_dir", str(out)]
    calls = []

    def run(job):
        calls.append(job["method"])
        return fake_run(job)

    first = grid.main(argv, run=run)
    assert len(first) == len(calls) == 3 * 7
    md = (out / "structured_grid.md").read_text()
    assert "PARTIAL" not in md
    assert "afr vs magnitude: 2/3 paired runs won (67%)" in md and "**met**" in md
    assert "afr vs snip: 1/3 paired runs won (33%)" in md and "**not met**" in md
    # mean of (0.80-0.75, 0.70-0.72, 0.60-0.50) in points = +4.3, wins 2/3
    assert "| digits | magnitude (structured) | +4.3 (2/3) | +4.3 (2/3) |" in md
    assert "| digits | random (structured) | +13.3 (2/3) |" in md  # the tie on seed 0 is no win
    assert "2.00x, 50% MACs at 97.0% sparsity (structured afr 2.00x)" in md
    assert "| afr | 50% | 2.0 / 1.0 | 10 / 20 |" in md
    # Interrupted: results.json gone, two runs in the partial file, the last line torn.
    (out / "structured_grid.json").unlink()
    kept = [r for r in first if r["seed"] == 0 and r["method"] in ("dense", "afr")]
    kept[1]["accuracy"] = 0.125  # marked, to see that it is not rerun
    lines = [json.dumps(r) for r in kept] + ['{"task": "dig']
    (out / "structured_grid.partial.jsonl").write_text("\n".join(lines))
    calls.clear()
    capsys.readouterr()
    resumed = grid.main([*argv, "--resume"], run=run)
    assert "21 runs on 1 worker(s), 2 done" in capsys.readouterr().out
    assert len(calls) == 19 and len(resumed) == 21
    assert [r["accuracy"] for r in resumed if r["method"] == "afr"][0] == 0.125
    assert not (out / "structured_grid.partial.jsonl").exists()
    # Tables of a grid that did not finish (seed 3 never ran): labelled partial, nothing run.
    calls.clear()
    tabulated = grid.main([*argv, "--seeds", "0", "1", "2", "3", "--tabulate_only"], run=run)
    assert len(tabulated) == 21 and calls == []
    saved = json.loads((out / "structured_grid.json").read_text())
    assert saved["meta"]["planned"] == 28 and saved["meta"]["runs"] == 21
    assert "**Partial**: 7 planned runs are missing" in (out / "structured_grid.md").read_text()


def test_toy_grid_prunes_structurally_and_matches_unstructured_latency(tmp_path):
    from helpers import tiny_vit
    from transformers import ViTImageProcessor

    grid = load("structured_grid")
    model_dir = tmp_path / "model"
    tiny_vit(num_labels=3).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    methods = ["dense", "afr", "magnitude", "afr_unstructured"]
    argv = ["--preset", "toy", "--workers", "1", "--model", str(model_dir), "--methods", *methods]
    runs = {r["method"]: r for r in grid.main([*argv, "--output_dir", str(tmp_path / "out")])}
    assert set(runs) == set(methods)
    for method in ("afr", "magnitude"):  # half the encoder Linear weights gone, >= 1 head kept
        r = runs[method]
        assert abs(r["linear_weights_kept"] - 0.5) < 0.05
        assert len(r["heads"]) == 2 and all(1 <= h <= 2 for h in r["heads"])
        assert len(r["mlp_units"]) == 2 and r["parameters"] < runs["dense"]["parameters"]
    unstructured = runs["afr_unstructured"]
    assert 0.5 <= unstructured["unstructured_sparsity"] <= grid.MAX_UNSTRUCTURED
    assert abs(unstructured["sparsity_measured"] - unstructured["unstructured_sparsity"]) < 1e-3
    assert len(unstructured["match"]["steps"]) == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs.values())


def test_a_ranking_other_than_per_kind_has_its_own_runs_and_files(tmp_path, capsys):
    grid = load("structured_grid")
    out = tmp_path / "results"
    argv = ["--tasks", "digits", "--sparsities", "0.5", "--seeds", "0", "--workers", "1",
            "--methods", "dense", "afr", "--output_dir", str(out)]  # fmt: skip
    first = grid.main(argv, run=fake_run)
    assert {r["group_ranking"] for r in first} == {"per_kind"}
    # runs saved before the field existed are per_kind runs: resumed, not run again
    saved = json.loads((out / "structured_grid.json").read_text())
    for run in saved["runs"]:
        del run["group_ranking"]
    (out / "structured_grid.json").write_text(json.dumps(saved))
    calls = []
    grid.main([*argv, "--resume"], run=lambda job: calls.append(job) or fake_run(job))
    assert calls == []
    per_layer = grid.main([*argv, "--resume", "--group_ranking", "per_layer"], run=fake_run)
    assert {r["group_ranking"] for r in per_layer} == {"per_layer"} and len(per_layer) == 2
    assert "group_ranking per_layer" in (out / "structured_grid-per_layer.md").read_text()
    assert "group_ranking per_kind" in (out / "structured_grid.md").read_text()
    assert "scored through a fitted head" in (out / "structured_grid.md").read_text()
    random_head = grid.main([*argv, "--no_fit_head"], run=fake_run)
    assert {r["fit_head"] for r in random_head} == {False}
    md = (out / "structured_grid-no_fit_head.md").read_text()
    assert "scored through the new random head" in md
    assert (
        "`python benchmarks/structured_grid.py --seeds 0 --no_fit_head --methods dense afr`" in md
    )
    uncentred = grid.main([*argv, "--no_feature_center"], run=fake_run)
    assert {r["feature_center"] for r in uncentred} == {False}
    assert "ReFer features uncentred" in (out / "structured_grid-uncentered.md").read_text()
    # a run that reads no features is the same run whatever the ReFer feature options say
    for method, same in (("dense", True), ("snip", True), ("afr", False), ("refer", False)):
        keys = {
            grid._job_key({**first[0], "method": method, **options})
            for options in ({"feature_center": False}, {"feature_center": None},
                            {"feature_token": "mean"})
        }  # fmt: skip
        assert (len(keys) == 1) == same, method


def test_variants_pair_afr_with_magnitude_of_the_same_ranking_and_snip_of_the_same_head(tmp_path):
    variants = load("structured_grid_variants")

    def runs(**accuracy_by_method):
        return [
            {"task": "digits", "seed": seed, "method": method, "sparsity": 0.5, **extra,
             "accuracy": accuracy[seed]}
            for method, (accuracy, extra) in accuracy_by_method.items()
            for seed in (0, 1)
        ]  # fmt: skip

    random_head = {"fit_head": False}
    (tmp_path / "structured_grid-no_fit_head.json").write_text(
        json.dumps(
            {
                "runs": runs(
                    afr=((0.5, 0.9), random_head),
                    snip=((0.6, 0.6), random_head),
                    magnitude=((0.7, 0.7), random_head),
                )
            }
        )  # fmt: skip
    )
    fitted, centred = {"fit_head": None}, {"fit_head": None, "feature_center": None}
    (tmp_path / "structured_grid.json").write_text(  # afr and snip through a fitted head
        json.dumps({"runs": runs(afr=((0.8, 0.8), centred), snip=((0.9, 0.7), fitted))})
    )
    (tmp_path / "structured_grid-uncentered.json").write_text(  # before the field existed
        json.dumps({"runs": runs(afr=((0.6, 0.9), fitted))})
    )
    text = variants.main(["--results_dir", str(tmp_path)])
    # fitted: afr 80/80 against magnitude 70/70 (the random-head file's) and snip 90/70; snip
    # reads no features: its runs serve centred and uncentred afr
    cells = "| 1 | 4 | 2 | 80.0 | 80.0 | 70.0 | 2/2 (+10.0) | 1/2 (+0.0) |"
    assert "| per_kind | fitted | cls, centred " + cells in text
    cells = "| 1 | 4 | 2 | 75.0 | 80.0 | 70.0 | 1/2 (+5.0) | 1/2 (-5.0) |"
    assert "| per_kind | fitted | cls, uncentred " + cells in text
    cells = "| 1 | 4 | 2 | 70.0 | 60.0 | 70.0 | 1/2 (+0.0) | 1/2 (+10.0) |"
    assert "| per_kind | new, random | cls, uncentred " + cells in text
    assert (tmp_path / "structured_grid_variants.md").read_text() == text


@pytest.mark.parametrize("option", ["--rounds", "--num_batches"])
def test_a_count_below_one_is_one_line_before_any_run(option, tmp_path, capsys):
    grid = load("structured_grid")
    with pytest.raises(SystemExit) as exit_info:
        grid.main([option, "0", "--output_dir", str(tmp_path / "out")], run=fake_run)
    assert exit_info.value.code == 2
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
