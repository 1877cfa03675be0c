"""Structured pruning before fine-tuning: which criterion keeps the most accuracy?

Whole attention heads and MLP hidden units are removed (`PrunerConfig(structure="heads+mlp")`),
so the pruned model is a smaller dense model. On the offline proxy of `benchmarks/replicate.py`
(the embedded glyph-pretrained tiny ViT, `hf_afr.DEFAULT_MODEL`) and its tasks, the grid
compares, per (task, seed, sparsity), with the same scoring batches, classifier head and
fine-tuning recipe as `replicate.py` (paired runs):

- structured `afr`, `snip`, `refer`, `magnitude` (group L2 norm) and `random`;
- `afr_unstructured`: unstructured AFR masks, exactly shrunk (`hf_afr.inference.shrink`), at
  the sparsity whose shrunk model is as fast as the structured AFR model (`match_latency`:
  bisected, timed side by side in the same process), then fine-tuned with exact masks;
- `dense`, once per (task, seed).

Each run records its model's speed-up over dense (before fine-tuning), kept widths and MACs.

    python benchmarks/structured_grid.py                 # 3 tasks x 3 seeds x 30/50/70%: 171 runs
    python benchmarks/structured_grid.py --tasks digits  # one task
    python benchmarks/structured_grid.py --resume        # only the runs not done yet
    python benchmarks/structured_grid.py --preset toy    # digits, seed 0, 50%, tiny data: seconds

Structured runs use hf_afr's defaults (`group_ranking="per_kind"`, a fitted head for scoring,
centred ReFer features, one round); `--group_ranking`, `--no_fit_head`, `--feature_token`,
`--no_feature_center`, `--rounds` and `--num_batches` runs go to their own files
(`structured_grid-per_layer.*`, `structured_grid-no_fit_head-uncentered.*`, ...;
`structured_grid_variants.py` sets them side by side).

Each finished run is appended to `structured_grid.partial.jsonl` in `--output_dir` (default
`benchmarks/results/`); `--resume` keeps the runs done there or in `structured_grid.json`. The
tables (`structured_grid_report.py`) go to `structured_grid.md`; `--tabulate_only` rewrites them.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replicate  # noqa: E402
import structured_grid_report  # noqa: E402

from hf_afr.architectures import FEATURE_TOKENS  # noqa: E402
from hf_afr.config import GROUP_RANKINGS  # noqa: E402

STRUCTURED = ("afr", "snip", "refer", "magnitude", "random")
UNSTRUCTURED = "afr_unstructured"
METHODS = ("dense", *STRUCTURED, UNSTRUCTURED)
TASKS = ("digits", "typefaces", "cyrillic")
STRUCTURE = "heads+mlp"
MAX_UNSTRUCTURED = 0.995  # the densest-shrinking unstructured sparsity tried
NAME = "structured_grid"
# What identifies a run (a result holds these fields and its measurements).
JOB_FIELDS = (
    "epochs", "batch_size", "lr", "num_batches", "scoring_batch_size", "train_limit", "task",
    "seed", "method", "sparsity", "group_ranking", "fit_head", "feature_token", "feature_center", "rounds",
)  # fmt: skip
# What runs saved before a field existed did (they scored through the model's random head and
# took ReFer's singular values of uncentred features).
DEFAULTS = {
    "group_ranking": "per_kind", "fit_head": False, "feature_token": "auto",
    "feature_center": False, "rounds": 1,
}  # fmt: skip
FEATURE_METHODS = ("afr", "refer", UNSTRUCTURED)  # read ReFer's features (the unstructured run
# times its model against structured AFR's)
FEATURE_FIELDS = ("feature_token", "feature_center")


@functools.cache
def task_data(task: str, train_limit: int | None) -> dict:
    """`replicate.load_task`, optionally cut to the first `train_limit` train and test images."""
    data = replicate.load_task(task)
    return data if train_limit is None else {k: v[:train_limit] for k, v in data.items()}


def speedups(models: dict[str, torch.nn.Module], pixel_values: torch.Tensor, rounds: int) -> dict:
    """Fastest-call speed-up of each model over `models["dense"]`, timed side by side."""
    from hf_afr.inference.timing import time_side_by_side

    for model in models.values():
        model.eval()
    calls = {k: functools.partial(m, pixel_values=pixel_values) for k, m in models.items()}
    with torch.inference_mode():
        timings = time_side_by_side(calls, baseline="dense", rounds=rounds, min_time=0.02)
    return {k: t.best_speedup for k, t in timings.items()} | {
        f"{k}_seconds": t.seconds for k, t in timings.items()
    }


def encoder_linear_weights(model: torch.nn.Module) -> int:
    from hf_afr.architectures import encoder_blocks

    return sum(
        m.weight.numel()
        for block in encoder_blocks(model).values()
        for m in block.modules()
        if isinstance(m, torch.nn.Linear)
    )


def widths(model: torch.nn.Module) -> dict:
    """Kept heads and MLP units per encoder block, as the pruned model's config records them."""
    get = lambda key: list(getattr(model.config, key, None) or [])  # noqa: E731
    return {"heads": get("layer_num_attention_heads"), "mlp_units": get("layer_intermediate_sizes")}


def _load(job: dict, method: str, sparsity: float):
    """The pretrained model with the (task, seed)'s new head, in an unstructured pruner."""
    from hf_afr import AFRPruner, PrunerConfig

    data = task_data(job["task"], job["train_limit"])
    torch.manual_seed(job["seed"])  # the same new head for every method of a (task, seed)
    config = PrunerConfig(
        method=method, sparsity=sparsity, num_batches=job["num_batches"], seed=job["seed"]
    )
    return AFRPruner.from_pretrained(job["model"], config, id2label=dict(enumerate(data["names"])))


def _structured_model(job: dict, method: str, base: torch.nn.Module, batches) -> torch.nn.Module:
    """`method` at the job's sparsity with whole heads and units removed (a smaller model)."""
    from hf_afr import AFRPruner, PrunerConfig

    config = PrunerConfig(
        method=method,
        sparsity=job["sparsity"],
        num_batches=job["num_batches"],
        seed=job["seed"],
        structure=STRUCTURE,
        group_ranking=job["group_ranking"],
        fit_head=job["fit_head"],
        feature_token=job["feature_token"],
        feature_center=job["feature_center"],
        rounds=job["rounds"],
    )
    pruner = AFRPruner(base, config)
    pruner.prune(batches, show_progress=False)
    return pruner.model


def unstructured_masks(scores: dict, params: dict, config, sparsity: float) -> dict:
    """The unstructured masks of `scores` at `sparsity` (as `AFRPruner.prune` selects them)."""
    import dataclasses

    from hf_afr.controls import controlled_masks

    return controlled_masks(scores, params, dataclasses.replace(config, sparsity=sparsity))


def match_latency(job: dict, base, scores: dict, config, batches, pixel_values) -> dict:
    """The unstructured AFR sparsity whose shrunk model is as fast as structured AFR's model.

    Bisects d = 1 - sparsity geometrically between 1 - job sparsity and 1 - MAX_UNSTRUCTURED;
    each step times dense, structured and the shrunk candidate side by side. Returns the step
    whose speed-up is closest to the structured model's, with every step.
    """
    from hf_afr.inference import shrink
    from hf_afr.masks import apply_masks

    structured = _structured_model(job, "afr", copy.deepcopy(base), batches)
    lo, hi = 1.0 - job["sparsity"], 1.0 - MAX_UNSTRUCTURED  # densities: slower ... faster
    best, steps = None, []
    for _ in range(job["bisection_steps"]):
        density = math.sqrt(lo * hi)
        sparsity = round(1.0 - density, 5)
        candidate = copy.deepcopy(base)
        params = {name: candidate.get_parameter(name) for name in scores}
        apply_masks(params, unstructured_masks(scores, params, config, sparsity))
        report = shrink(candidate)
        speed = speedups(
            {"dense": base, "structured": structured, "unstructured": candidate},
            pixel_values,
            job["latency_rounds"],
        )
        gap = abs(math.log(speed["unstructured"] / speed["structured"]))
        step = {"sparsity": sparsity, "macs_reduction": report.macs_reduction, **speed}
        steps.append(step)
        if best is None or gap < best[0]:
            best = (gap, step)
        if speed["unstructured"] < speed["structured"]:
            lo = density  # too slow: sparser
        else:
            hi = density
    return {"steps": steps, **best[1]}


def run_job(job: dict) -> dict:
    """Prune (unless dense), fine-tune and evaluate one (task, seed, method, sparsity)."""
    from transformers.utils import logging

    from hf_afr.structure.prune import remove_dead_units

    torch.set_num_threads(1)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    start = time.perf_counter()
    data = task_data(job["task"], job["train_limit"])
    batches = replicate.scoring_batches(data, job)
    pixel_values = data["xte"][: job["latency_batch"]]
    method, result, masks = job["method"], dict(job), None
    if method == "dense":
        pruner = _load(job, "random", 0.5)
        model = pruner.model
        result["linear_weights_kept"] = 1.0
    elif method == UNSTRUCTURED:
        pruner = _load(job, "afr", job["sparsity"])
        t0 = time.perf_counter()
        base = copy.deepcopy(pruner.model)
        scores = pruner.compute_scores(batches, show_progress=False)
        match = match_latency(job, base, scores, pruner.config, batches, pixel_values)
        del base
        result["matching_seconds"] = time.perf_counter() - t0
        result["match"] = match
        result["unstructured_sparsity"] = match["sparsity"]
        result["speedup"] = match["unstructured"]
        result["structured_speedup"] = match["structured"]
        result["linear_weights_kept"] = 1.0 - match["macs_reduction"]  # after shrinking
        pruner.set_masks(
            unstructured_masks(scores, pruner.params, pruner.config, match["sparsity"])
        )
        result["sparsity_measured"] = pruner.sparsity_report().sparsity
        model = pruner.model
        masks = remove_dead_units(model, pruner.masks)
    else:
        pruner = _load(job, method, job["sparsity"])
        base = copy.deepcopy(pruner.model)
        dense_weights = encoder_linear_weights(base)
        t0 = time.perf_counter()
        model = _structured_model(job, method, pruner.model, batches)
        result["scoring_seconds"] = time.perf_counter() - t0
        result["linear_weights_kept"] = encoder_linear_weights(model) / dense_weights
        result.update(widths(model))
        speed = speedups({"dense": base, "model": model}, pixel_values, job["latency_rounds"])
        result["speedup"] = speed["model"]
        del base
    t0 = time.perf_counter()
    replicate.fine_tune(
        model, data, job["seed"], job["epochs"], job["batch_size"], job["lr"], masks
    )
    result["fine_tune_seconds"] = time.perf_counter() - t0
    result["accuracy"] = replicate.accuracy(model, data)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["seconds"] = time.perf_counter() - start
    return result


# Within a seed, the goal's comparisons come first: a grid stopped early holds them.
PHASES = (("dense", "afr", "magnitude", "snip"), (UNSTRUCTURED, "refer", "random"))


def plan(args) -> list[dict]:
    """The runs: seed by seed, phase by phase, task by task (an early stop keeps whole cells)."""
    base = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "num_batches": args.num_batches, "scoring_batch_size": args.scoring_batch_size,
        "train_limit": args.train_limit, "latency_batch": args.latency_batch,
        "latency_rounds": args.latency_rounds, "bisection_steps": args.bisection_steps,
        "group_ranking": args.group_ranking, "fit_head": False if args.no_fit_head else None,
        "feature_token": args.feature_token, "rounds": args.rounds,
        "feature_center": False if args.no_feature_center else None,
    }  # fmt: skip
    jobs = []
    for seed in args.seeds:
        for phase in PHASES:
            methods = [m for m in phase if m in args.methods]
            for task in args.tasks:
                if "dense" in methods:
                    jobs.append(
                        {**base, "task": task, "seed": seed, "method": "dense", "sparsity": 0}
                    )
                for sparsity in args.sparsities:
                    jobs += [
                        {**base, "task": task, "seed": seed, "method": m, "sparsity": sparsity}
                        for m in methods
                        if m != "dense"
                    ]
    return jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("full", "toy"), default="full")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    replicate.add_recipe_arguments(p)
    p.add_argument("--train_limit", type=int, default=None, help="first N train/test images")
    p.add_argument("--latency_batch", type=int, default=64, help="images per timed call")
    p.add_argument("--latency_rounds", type=int, default=5, help="side-by-side timing rounds")
    p.add_argument("--bisection_steps", type=int, default=6, help="latency-matching steps")
    p.add_argument("--group_ranking", default="per_kind", choices=GROUP_RANKINGS)  # own files
    p.add_argument("--no_fit_head", action="store_true", help="PrunerConfig(fit_head=False)")
    p.add_argument("--feature_token", default="auto", choices=FEATURE_TOKENS, help="ReFer/AFR")
    p.add_argument(
        "--no_feature_center", action="store_true", help="PrunerConfig(feature_center=False)"
    )
    p.add_argument("--rounds", type=int, default=1, help="PrunerConfig(rounds=...)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    p.add_argument("--resume", action="store_true", help="only the runs not done yet")
    p.add_argument("--dry_run", action="store_true", help="list the runs; run nothing")
    p.add_argument("--tabulate_only", action="store_true", help="tables from the saved runs")
    return p


def parse_args(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("rounds", "num_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.preset == "toy":
        args.tasks, args.seeds, args.sparsities = ["digits"], [0], [0.5]
        args.epochs, args.train_limit, args.num_batches = 1, 96, 1
        args.scoring_batch_size, args.latency_batch = 16, 8
        args.latency_rounds, args.bisection_steps = 1, 2
    return args


def _job_key(run: dict) -> str:
    def value(field: str):
        if field in FEATURE_FIELDS and run["method"] not in FEATURE_METHODS:
            return None  # changes nothing else: those runs serve every ReFer feature option
        return run.get(field, DEFAULTS.get(field))

    return json.dumps([value(k) for k in JOB_FIELDS])


# The options of a variant, in the order of its file suffixes and of its command line, with the
# suffix each one adds when it is not the default.
VARIANT_SUFFIXES = {
    "group_ranking": "-{}", "no_fit_head": "-no_fit_head", "feature_token": "-{}",
    "no_feature_center": "-uncentered", "rounds": "-rounds{}", "num_batches": "-batches{}",
}  # fmt: skip
COMMAND_OPTIONS = ("seeds", "group_ranking", "feature_token", "rounds", "num_batches",
                   "no_fit_head", "no_feature_center", "methods")  # fmt: skip


def _changed(args, names) -> list[tuple[str, object]]:
    """`(name, value)` of the options among `names` whose value is not the parser's default."""
    default = _parser().get_default
    return [(n, getattr(args, n)) for n in names if getattr(args, n) != default(n)]


def result_name(args) -> str:
    """The stem of the result files: `structured_grid` for hf_afr's defaults, with a suffix per
    other choice (`-per_layer`, `-no_fit_head`, `-mean`, `-uncentered`, `-rounds3`, `-batches8`)."""
    return NAME + "".join(
        VARIANT_SUFFIXES[n].format(v) for n, v in _changed(args, VARIANT_SUFFIXES)
    )


def command(args) -> str:
    """The grid's command line with the options that differ from the defaults."""
    flags = [
        f"--{n}" if v is True else f"--{n} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for n, v in _changed(args, COMMAND_OPTIONS)
    ]
    return " ".join(["python benchmarks/structured_grid.py", *flags])


def finished_runs(out: Path, name: str = NAME) -> tuple[list[dict], float | None]:
    """Runs done in `out` (the saved grid and the partial file of an interrupted one; a torn last
    line is dropped) and the saved grid's wall time."""
    return replicate.read_runs(out / f"{name}.json", out / f"{name}.partial.jsonl", _job_key)


def write_outputs(results: list[dict], meta: dict, out: Path, name: str = NAME) -> str:
    table = structured_grid_report.report(results, meta)
    (out / f"{name}.md").write_text(table)
    return table


def main(argv=None, run=run_job) -> list[dict]:
    args = parse_args(argv)
    out, name = Path(args.output_dir), result_name(args)
    jobs = plan(args)
    if args.tabulate_only:  # the runs done so far (of a finished or interrupted grid)
        results, _ = finished_runs(out, name)
        saved = out / f"{name}.json"
        meta = json.loads(saved.read_text())["meta"] if saved.exists() else {}
        keys = ("wall_seconds", "wall_seconds_earlier", "resumed")
        return save(results, jobs, args, out, {k: meta.get(k) for k in keys})
    if args.dry_run:
        for job in jobs:
            print(f"{job['task']} seed {job['seed']} {job['method']} {job['sparsity']:.0%}")
        print(f"{len(jobs)} runs")
        return []
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{name}.partial.jsonl"
    results, earlier_wall = finished_runs(out, name) if args.resume else ([], None)
    if not args.resume:
        partial.unlink(missing_ok=True)
    planned = {_job_key(job) for job in jobs}
    results = [r for r in results if _job_key(r) in planned]  # others are not counted or kept
    done = {_job_key(r) for r in results}
    todo = [job for job in jobs if _job_key(job) not in done]
    print(f"{len(jobs)} runs on {args.workers} worker(s), {len(jobs) - len(todo)} done", flush=True)
    start = time.perf_counter()
    for r in replicate.run_pending(run, todo, args.workers, partial, ordered=True):
        results.append(r)
        print(
            f"[{len(results)}/{len(jobs)}] {r['task']} seed {r['seed']} {r['method']} "
            f"{r['sparsity']:.0%}: {100 * r['accuracy']:.1f}% ({r['seconds']:.0f}s)",
            flush=True,
        )
    timing = {"wall_seconds": time.perf_counter() - start, "wall_seconds_earlier": earlier_wall}
    return save(results, jobs, args, out, timing | {"resumed": len(jobs) - len(todo)})


def save(results: list[dict], jobs: list[dict], args, out: Path, timing: dict) -> list[dict]:
    """Write `structured_grid.json` and `.md` with the planned runs among `results`, in plan
    order; the partial file is removed once every planned run is saved."""
    from hf_afr.files import atomic_write_text

    planned = {_job_key(job): i for i, job in enumerate(jobs)}
    results = sorted(
        (r for r in results if _job_key(r) in planned), key=lambda r: planned[_job_key(r)]
    )
    meta = {
        "args": dict(vars(args)),
        "command": command(args),
        "torch": torch.__version__,
        "runs": len(results),
        "planned": len(jobs),
        **timing,
    }
    text = json.dumps({"meta": meta, "runs": results}, indent=1, default=float)
    name = result_name(args)
    atomic_write_text(out / f"{name}.json", text)
    if len(results) == len(jobs):
        (out / f"{name}.partial.jsonl").unlink(missing_ok=True)
    print(write_outputs(results, meta, out, name))
    return results


if __name__ == "__main__":
    main()
