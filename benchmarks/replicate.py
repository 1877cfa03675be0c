"""Does AFR beat SNIP? The paper's comparison, sanity checks and more criteria on an offline proxy.

The embedded glyph-pretrained tiny ViT (`hf_afr.DEFAULT_MODEL`) plays ViT-B/16; three real or
rendered downstream tasks play the paper's datasets:

- `digits`: scikit-learn's handwritten digits (1797 real 8x8 scans, upsampled), 10 classes;
- `cyrillic`: Cyrillic letters, a script absent from pretraining, trained on the training
  fonts and tested on held-out fonts;
- `typefaces`: which of 20 typefaces drew a letter (fine-grained, like the paper's Table 1),
  tested on held-out letters.

For every (task, seed) all runs see the same scoring batches, the same new classifier head
and the same fine-tuning recipe (AdamW, cosine schedule, masks kept by `enforce_masks`), so
methods are compared pairwise per seed. Masks come from the code path of `AFRPruner.prune`
(`compute_scores`, then `hf_afr.controls.controlled_masks`), so controls apply as in `prune`.

The grid has three parts (`--parts`), 252 runs in all; fine-tuning dominates their cost. A pruned
model is fine-tuned without the MLP hidden units whose `fc2` column its masks prune entirely
(`hf_afr.structure.prune.remove_dead_units`: exact for masked fine-tuning, the accuracies are the same), which at
95-98% halves a scored run (not a random, shuffled or inverted one: their masks leave no dead
unit). With 3 epochs of fine-tuning the whole grid takes under an hour on 2 cores (5 epochs,
`--epochs 5`, about 75 min). Each
finished run is appended to `results.partial.jsonl`; `--resume` keeps the runs already done
(there or in `results.json`) and runs only the rest.

- `main`: digits and cyrillic at 95% and 98%, 3 seeds: dense, random, magnitude, snip, refer,
  afr, synflow, grasp, fisher and `refer_snip_log_z` (z(log ReFer) + 0.5 z(log SNIP), the
  best SNIP + ReFer combination on validation splits; `benchmarks/combination_study.py`). 90% is left out (the earlier
  grid measured it; the comparisons of interest are at 95-98%), and so is the token-mean feature
  ablation (`--ablation` brings it back).
- `controls`: the sanity checks of Frankle et al. (2021) at 95% only, digits and cyrillic,
  3 seeds: `shuffle` for every data-driven criterion, `invert` and `magnitude_inside` for snip,
  refer and afr.
- `typefaces`: the fine-grained task at 80% (the paper's Table 1 sparsity), dense, every
  criterion and the controls of the `controls` part, 3 seeds.

    python benchmarks/replicate.py              # full grid (252 runs, under an hour on 2 cores)
    python benchmarks/replicate.py --quick      # digits, seed 0, 98%, 8 runs (a few minutes)

Writes `results.json` (raw runs), `results.md` (mean +- std tables, paired comparisons) and
`results.png` to `--output_dir` (default `benchmarks/results/`); `--tabulate_only` rewrites
the tables and plot from an existing `results.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import combined_criteria  # noqa: E402, F401  (registers refer_snip_log_z)
import replicate_report  # noqa: E402

from hf_afr.config import CONTROLS  # noqa: E402

COMBINATION = replicate_report.COMBINATION
METHODS = (
    "dense", "random", "magnitude", "snip", "refer", "afr", "synflow", "grasp", "fisher",
    COMBINATION,
)  # fmt: skip
DATA_FREE = ("random", "magnitude", "synflow")
# Criteria that get each control in the `controls` part.
CONTROLLED = {
    "shuffle": ("snip", "refer", "afr", "grasp", "fisher", COMBINATION),
    "invert": ("snip", "refer", "afr"),
    "magnitude_inside": ("snip", "refer", "afr"),
}
ABLATION = ("refer", "afr")  # with --ablation, also run with feature_token="mean"
TASKS = ("digits", "cyrillic", "typefaces")
PARTS = ("main", "controls", "typefaces")


@functools.cache
def load_task(task: str) -> dict[str, torch.Tensor]:
    """Train/test tensors normalised as the model's processor does (x / 127.5 - 1)."""
    from hf_afr.data import (
        digits_arrays,
        glyph_arrays,
        glyph_class_names,
        typeface_arrays,
        typeface_class_names,
    )

    if task == "digits":
        (xtr, ytr), (xte, yte) = digits_arrays("train"), digits_arrays("test")
        names = [str(d) for d in range(10)]
    elif task == "cyrillic":
        xtr, ytr = glyph_arrays("cyrillic", "train", samples_per_class=40, seed=1)
        xte, yte = glyph_arrays("cyrillic", "test", samples_per_class=20, seed=2)
        names = glyph_class_names("cyrillic")
    elif task == "typefaces":
        xtr, ytr = typeface_arrays("train", samples_per_class=60, seed=1)
        xte, yte = typeface_arrays("test", samples_per_class=20, seed=2)
        names = typeface_class_names()
    else:
        raise ValueError(f"Unknown task {task!r}; choose from {TASKS}.")

    def tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    return {
        "xtr": tensor(xtr),
        "ytr": torch.from_numpy(ytr),
        "xte": tensor(xte),
        "yte": torch.from_numpy(yte),
        "names": names,
    }


def score_statistics(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).double()
    z = (flat - flat.mean()) / flat.std()
    return {"skew": float(z.pow(3).mean()), "max_z": float(z.max())}


def fine_tune(model, data, seed: int, epochs: int, batch_size: int, lr: float, masks) -> None:
    from transformers import get_cosine_schedule_with_warmup

    from hf_afr.enforcement import enforce_masks

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    n = len(data["ytr"])
    steps = epochs * math.ceil(n / batch_size)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    enforcer = enforce_masks(model, masks, optimizer) if masks else None
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            logits = model(pixel_values=data["xtr"][idx]).logits
            F.cross_entropy(logits, data["ytr"][idx]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    if enforcer is not None:
        enforcer.verify(optimizer)
        enforcer.detach()


@torch.no_grad()
def accuracy(model, data, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data["yte"]), batch_size):
        logits = model(pixel_values=data["xte"][i : i + batch_size]).logits
        correct += int((logits.argmax(-1) == data["yte"][i : i + batch_size]).sum())
    return correct / len(data["yte"])


def shrink_statistics(model) -> dict:
    """What `hf_afr.shrink` removes exactly from the pruned model (before fine-tuning)."""
    from hf_afr.inference import shrinkable

    report = shrinkable(model)
    return {
        "macs_reduction": report.macs_reduction,
        "mlp_units_removed": [
            1 - b.units_after / b.units_before for b in report.blocks if b.kind == "mlp"
        ],
    }


def scoring_batches(data: dict, job: dict) -> list[dict[str, torch.Tensor]]:
    """The scoring batches of a (task, seed): every method of the seed sees the same images."""
    generator = torch.Generator().manual_seed(10_000 + job["seed"])
    idx = torch.randperm(len(data["ytr"]), generator=generator)
    bs = job["scoring_batch_size"]
    return [
        {
            "pixel_values": data["xtr"][idx[i * bs : (i + 1) * bs]],
            "labels": data["ytr"][idx[i * bs : (i + 1) * bs]],
        }
        for i in range(job["num_batches"])
    ]


def run_job(job: dict) -> dict:
    """Prune (unless dense), fine-tune and evaluate one (task, seed, method, control, sparsity)."""
    from transformers.utils import logging

    from hf_afr import AFRPruner, PrunerConfig
    from hf_afr.controls import controlled_masks
    from hf_afr.structure.prune import remove_dead_units

    torch.set_num_threads(1)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    start = time.perf_counter()
    data = load_task(job["task"])
    id2label = dict(enumerate(data["names"]))
    torch.manual_seed(job["seed"])  # the same new head for every method of a (task, seed)
    method = job["method"]
    config = PrunerConfig(
        method="random" if method == "dense" else method,
        sparsity=job["sparsity"],
        feature_token=job["feature_token"],
        num_batches=job["num_batches"],
        seed=job["seed"],
        control=job["control"],
    )
    pruner = AFRPruner.from_pretrained(job["model"], config, id2label=id2label)
    result = dict(job)
    masks = None
    if method != "dense":
        batches = scoring_batches(data, job)
        t0 = time.perf_counter()
        # What `AFRPruner.prune` does, with the scores kept for their statistics.
        scores = pruner.compute_scores(batches, show_progress=False)
        pruner.set_masks(controlled_masks(scores, pruner.params, pruner.config))
        result["scoring_seconds"] = time.perf_counter() - t0
        result["score_stats"] = score_statistics(scores)
        report = pruner.sparsity_report()
        result["sparsity_measured"] = report.sparsity
        result["fully_pruned"] = report.fully_pruned
        result["kept_per_tensor"] = {name: int(m.sum()) for name, m in pruner.masks.items()}
        result["shrink"] = shrink_statistics(pruner.model)
        masks = remove_dead_units(pruner.model, pruner.masks)
    fine_tune(pruner.model, data, job["seed"], job["epochs"], job["batch_size"], job["lr"], masks)
    result["accuracy"] = accuracy(pruner.model, data)
    result["seconds"] = time.perf_counter() - start
    return result


def plan(args) -> list[dict]:
    """The runs of the selected parts, one dense run per (task, seed), without duplicates."""
    base = {
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_batches": args.num_batches,
        "scoring_batch_size": args.scoring_batch_size,
    }
    methods = [m for m in args.methods if m != "dense"]
    cells = []  # (task, sparsity, method, control, feature_token)
    if "main" in args.parts:
        for task in args.tasks:
            for s in args.sparsities:
                for m in methods:
                    cells.append((task, s, m, None, "cls"))
                    if args.ablation and m in ABLATION:
                        cells.append((task, s, m, None, "mean"))

    def controlled(task: str, sparsity: float) -> list[tuple]:
        return [
            (task, sparsity, m, control, "cls")
            for control in args.controls
            for m in CONTROLLED[control]
            if m in methods
        ]

    if "controls" in args.parts:
        for task in args.tasks:
            for s in args.control_sparsities:
                cells += controlled(task, s)
    if "typefaces" in args.parts:  # every criterion and its controls, at the task's sparsity
        for s in args.typefaces_sparsities:
            cells += [("typefaces", s, m, None, "cls") for m in methods] + controlled(
                "typefaces", s
            )
    jobs, seen = [], set()
    for seed in args.seeds:
        for task in dict.fromkeys(c[0] for c in cells):
            dense = [(task, 0.0, "dense", None, "cls")] if "dense" in args.methods else []
            for cell in dense + [c for c in cells if c[0] == task]:
                if (seed, *cell) in seen:
                    continue
                seen.add((seed, *cell))
                task_, sparsity, method, control, token = cell
                jobs.append(
                    {**base, "task": task_, "seed": seed, "method": method, "sparsity": sparsity,
                     "control": control, "feature_token": token}
                )  # fmt: skip
    return jobs


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The model, scoring and fine-tuning recipe every grid of these tasks shares."""
    from hf_afr import DEFAULT_MODEL

    p.add_argument("--model", default=str(DEFAULT_MODEL), help="pretrained ViT to prune")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num_batches", type=int, default=4, help="scoring batches")
    p.add_argument("--scoring_batch_size", type=int, default=32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, seed 0, 98%%, 8 runs")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument(
        "--tasks", nargs="+", default=["digits", "cyrillic"], choices=TASKS,
        help="tasks of the main and controls parts",
    )  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.95, 0.98])
    p.add_argument("--control_sparsities", nargs="+", type=float, default=[0.95])
    p.add_argument("--typefaces_sparsities", nargs="+", type=float, default=[0.8])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=list(CONTROLS))
    p.add_argument(
        "--ablation", action="store_true",
        help="also run refer and afr with token-mean features (main part)",
    )  # fmt: skip
    add_recipe_arguments(p)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--resume", action="store_true",
        help="keep the runs already done in --output_dir (results.json, and "
        "results.partial.jsonl of an interrupted grid) and run only the rest of the grid",
    )  # fmt: skip
    p.add_argument(
        "--tabulate_only",
        action="store_true",
        help="rewrite results.md and results.png from --output_dir/results.json (no runs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.parts, args.tasks, args.seeds = ["main", "controls"], ["digits"], [0]
        args.sparsities = args.control_sparsities = [0.98]
        args.methods = ["dense", "snip", "refer", "afr", COMBINATION]
        args.controls = ["shuffle"]
    return args


def write_outputs(results: list[dict], meta: dict, out: Path) -> str:
    table = replicate_report.header(meta) + replicate_report.summarise(results)
    (out / "results.md").write_text(table)
    replicate_report.plot(results, out / "results.png")
    return table


def _sort_key(r: dict) -> tuple:
    return (
        r["task"], r["seed"], METHODS.index(r["method"]), r.get("control") or "",
        r["feature_token"], r["sparsity"],
    )  # fmt: skip


# What identifies a run (a result holds these fields and its measurements).
JOB_FIELDS = (
    "epochs", "batch_size", "lr", "num_batches", "scoring_batch_size", "task", "seed", "method",
    "sparsity", "control", "feature_token",
)  # fmt: skip


def _job_key(run: dict) -> str:
    return json.dumps([run[k] for k in JOB_FIELDS])


def read_runs(saved: Path, partial: Path, key) -> tuple[list[dict], float | None]:
    """Runs already done: those of a finished grid (`saved`, a JSON file with `runs` and
    `meta`) and those of an interrupted one (`partial`, one JSON object per line; a torn last
    line is dropped, as its run did not finish). A run in both counts once (by `key(run)`).
    Also returns the finished grid's wall time (None without `saved`)."""
    runs, wall = {}, None
    if saved.exists():
        grid = json.loads(saved.read_text())
        wall = grid["meta"].get("wall_seconds")
        runs.update({key(r): r for r in grid["runs"]})
    for line in partial.read_text().splitlines() if partial.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        runs[key(r)] = r
    return list(runs.values()), wall


def run_pending(run, jobs: list[dict], workers: int, partial: Path, ordered: bool = False):
    """Yield `run(job)` for every job, in `workers` spawned processes when more than one (in
    plan order if `ordered`), appending each finished run to `partial` as one JSON line first:
    what `read_runs` picks up after an interruption."""
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 and jobs else None
    try:
        mapped = (pool.imap if ordered else pool.imap_unordered) if pool else map
        for r in mapped(run, jobs):
            with partial.open("a") as f:
                f.write(json.dumps(r, default=float) + "\n")
            yield r
    finally:
        if pool:
            pool.terminate()


def _finished_runs(out: Path) -> tuple[list[dict], float | None]:
    """Runs done in `out` (results.json and results.partial.jsonl) and the grid's wall time."""
    return read_runs(out / "results.json", out / "results.partial.jsonl", _job_key)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.tabulate_only:
        out = Path(args.output_dir)
        saved = json.loads((out / "results.json").read_text())
        saved["meta"].setdefault("runs", len(saved["runs"]))
        print(write_outputs(saved["runs"], saved["meta"], out))
        return saved["runs"]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(args)
    partial = out / "results.partial.jsonl"
    results, earlier_wall = _finished_runs(out) if args.resume else ([], None)
    if not args.resume:
        partial.unlink(missing_ok=True)
    done = {_job_key(r) for r in results}
    todo = [job for job in jobs if _job_key(job) not in done]
    print(
        f"{len(jobs)} runs on {args.workers} worker(s)"
        + (f", {len(jobs) - len(todo)} already done in {out}" if args.resume else ""),
        flush=True,
    )
    start = time.perf_counter()
    for r in run_pending(run_job, todo, args.workers, partial):
        results.append(r)
        print(
            f"[{len(results)}/{len(jobs)}] {r['task']} seed {r['seed']} "
            f"{replicate_report.label(r)} {r['sparsity']:.0%}: "
            f"{100 * r['accuracy']:.1f}% ({r['seconds']:.0f}s)",
            flush=True,
        )
    planned = {_job_key(job) for job in jobs}
    results = [r for r in results if _job_key(r) in planned]
    results.sort(key=_sort_key)
    meta = {
        "args": dict(vars(args)),
        "wall_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "threads_per_worker": 1,
        "runs": len(results),
        "resumed": len(jobs) - len(todo),  # runs kept from an earlier invocation
        "wall_seconds_earlier": earlier_wall,
        "run_seconds_mean": sum(r["seconds"] for r in results) / max(1, len(results)),
    }
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": results}, indent=1, default=float)
    )
    partial.unlink(missing_ok=True)
    print(write_outputs(results, meta, out))
    print(
        f"wall time {meta['wall_seconds']:.0f}s, {meta['run_seconds_mean']:.0f}s per run; "
        f"wrote {out}/results.{{json,md,png}}"
    )
    return results


if __name__ == "__main__":
    main()
