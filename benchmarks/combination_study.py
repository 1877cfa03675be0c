"""Which combination of SNIP and ReFer prunes best? A study on validation splits only.

AFR = z(SNIP) + z(ReFer) loses to ReFer alone on the offline proxy (benchmarks/replicate.py).
This study compares other combinations (`benchmarks/combined_criteria.py`) with SNIP and ReFer:

- `refer_budget_snip_rank`: ReFer's per-tensor kept counts, SNIP's ranking inside each tensor;
- `snip_budget_refer_rank`: the reverse;
- `log_sum`: log ReFer + log SNIP (the product of the scores);
- `log_z_0.5`, `log_z_0.25`: z(log ReFer) + alpha * z(log SNIP).

It never reads a test split: 20% of each task's training split (seeded per seed) is held out
as validation; the scoring batches are drawn from the remaining 80%, which is fine-tuned on
with the replication grid's recipe (same number and size of scoring batches, same new head
per (task, seed), same optimiser and schedule). All candidates of a (task, seed) share the
scoring batches, so the comparison is paired.

    python benchmarks/combination_study.py            # digits + cyrillic, 95/98%, 3 seeds
    python benchmarks/combination_study.py --quick    # digits, seed 0, 98%

Writes `combination.json` (raw runs) and `combination.md` (mean +- std, paired wins against
ReFer and SNIP) to `--output_dir` (default `benchmarks/results/`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replicate  # noqa: E402  (the grid's data, fine-tuning and evaluation)

CANDIDATES = (
    "snip",
    "refer",
    "refer_budget_snip_rank",
    "snip_budget_refer_rank",
    "log_sum",
    "log_z_0.5",
    "log_z_0.25",
)
VALIDATION_FRACTION = 0.2


def combine(name: str, snip: dict, refer: dict, sparsity: float) -> dict[str, torch.Tensor]:
    """The candidate's scores from the SNIP and ReFer scores of the same batches."""
    from combined_criteria import budget_rank_scores, log_sum_scores, log_z_scores

    if name == "snip":
        return snip
    if name == "refer":
        return refer
    if name == "refer_budget_snip_rank":
        return budget_rank_scores(refer, snip, sparsity)
    if name == "snip_budget_refer_rank":
        return budget_rank_scores(snip, refer, sparsity)
    if name == "log_sum":
        return log_sum_scores(refer, snip)
    if name.startswith("log_z_"):
        return log_z_scores(refer, snip, alpha=float(name[len("log_z_") :]))
    raise ValueError(f"Unknown candidate {name!r}; choose from {CANDIDATES}.")


def validation_task(task: str, seed: int) -> dict:
    """The task's training split cut into train (80%) and validation (20%), seeded."""
    data = replicate.load_task(task)
    generator = torch.Generator().manual_seed(20_000 + seed)
    order = torch.randperm(len(data["ytr"]), generator=generator)
    n_val = round(VALIDATION_FRACTION * len(order))
    val, train = order[:n_val], order[n_val:]
    return {
        "xtr": data["xtr"][train],
        "ytr": data["ytr"][train],
        "xte": data["xtr"][val],
        "yte": data["ytr"][val],
        "names": data["names"],
    }


def run_job(job: dict) -> dict:
    """Score with SNIP and ReFer, combine, prune, fine-tune, evaluate on validation."""
    from transformers.utils import logging

    from hf_afr import AFRPruner, PrunerConfig, select_masks
    from hf_afr.criteria.gradients import accumulate_gradients, connection_sensitivity

    torch.set_num_threads(1)
    logging.set_verbosity_error()
    start = time.perf_counter()
    data = validation_task(job["task"], job["seed"])
    torch.manual_seed(job["seed"])  # the same new head for every candidate of a (task, seed)
    config = PrunerConfig(
        method="afr", sparsity=job["sparsity"], num_batches=job["num_batches"], seed=job["seed"]
    )
    pruner = AFRPruner.from_pretrained(
        job["model"], config, id2label=dict(enumerate(data["names"]))
    )
    generator = torch.Generator().manual_seed(10_000 + job["seed"])
    idx = torch.randperm(len(data["ytr"]), generator=generator)
    bs = job["scoring_batch_size"]
    batches = [
        {"pixel_values": data["xtr"][idx[i * bs : (i + 1) * bs]], "labels": data["ytr"][idx[i * bs : (i + 1) * bs]]}
        for i in range(job["num_batches"])
    ]  # fmt: skip
    loss_grads, refer_grads = accumulate_gradients(
        pruner.model, batches, pruner.params, config, objectives=("loss", "refer")
    )
    snip = connection_sensitivity(loss_grads, pruner.params)
    refer = connection_sensitivity(refer_grads, pruner.params)
    scores = combine(job["candidate"], snip, refer, job["sparsity"])
    pruner.set_masks(select_masks(scores, job["sparsity"]))
    result = dict(job, sparsity_measured=pruner.sparsity_report().sparsity)
    replicate.fine_tune(
        pruner.model, data, job["seed"], job["epochs"], job["batch_size"], job["lr"], pruner.masks
    )
    result["accuracy"] = replicate.accuracy(pruner.model, data)
    result["seconds"] = time.perf_counter() - start
    return result


def plan(args) -> list[dict]:
    base = {k: getattr(args, k) for k in ("model", "epochs", "batch_size", "lr", "num_batches")}
    base["scoring_batch_size"] = args.scoring_batch_size
    return [  # seed-major: an interrupted study still has whole seeds
        {**base, "task": task, "seed": seed, "sparsity": sparsity, "candidate": candidate}
        for seed in args.seeds
        for task in args.tasks
        for sparsity in args.sparsities
        for candidate in args.candidates
    ]


def summarise(results: list[dict]) -> str:
    """Mean +- std validation accuracy and paired wins against ReFer and SNIP."""
    acc = {
        (r["task"], r["seed"], r["sparsity"], r["candidate"]): 100 * r["accuracy"] for r in results
    }
    cells = sorted({(r["task"], r["sparsity"]) for r in results})
    candidates = [c for c in CANDIDATES if any(r["candidate"] == c for r in results)]
    head = " | ".join(f"{t} {s:.0%}" for t, s in cells)
    lines = [
        "#### Validation accuracy (%, mean ± std over seeds; in brackets: paired wins "
        "against ReFer / against SNIP)",
        "",
        f"| candidate | {head} | beats both |",
        "|---|" + "---:|" * (len(cells) + 1),
    ]
    for c in candidates:
        row, both, total = [], 0, 0
        for t, s in cells:
            seeds = sorted({seed for (tt, seed, ss, cc) in acc if (tt, ss, cc) == (t, s, c)})
            values = [acc[t, seed, s, c] for seed in seeds]
            if not values:
                row.append("—")
                continue
            wins = []
            for ref in ("refer", "snip"):
                pairs = [
                    (acc[t, k, s, c], acc[t, k, s, ref]) for k in seeds if (t, k, s, ref) in acc
                ]
                wins.append(f"{sum(a > b for a, b in pairs)}/{len(pairs)}")
            for k in seeds:
                if (t, k, s, "refer") in acc and (t, k, s, "snip") in acc:
                    total += 1
                    both += acc[t, k, s, c] > max(acc[t, k, s, "refer"], acc[t, k, s, "snip"])
            mean, std = statistics.mean(values), statistics.pstdev(values)
            row.append(f"{mean:.1f} ± {std:.1f} ({' / '.join(wins)})")
        lines.append(f"| {c} | " + " | ".join(row) + f" | {both}/{total} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    from hf_afr import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, seed 0, 98%%")
    p.add_argument("--tasks", nargs="+", default=["digits", "cyrillic"], choices=replicate.TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.95, 0.98])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num_batches", type=int, default=4)
    p.add_argument("--scoring_batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--resume", action="store_true",
        help="keep the runs in --output_dir/combination.json and run only the missing ones",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.sparsities = ["digits"], [0], [0.98]
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    return args


def write_outputs(results: list[dict], args, wall: float, planned: int) -> str:
    """Write combination.{json,md} (after every run, so an interrupted study keeps its runs)."""
    results = sorted(results, key=lambda r: (r["task"], r["seed"], r["sparsity"], r["candidate"]))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "wall_seconds": wall, "torch": torch.__version__}
    (out / "combination.json").write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    done = "" if len(results) == planned else f" **Incomplete: {len(results)} of {planned} runs.**"
    table = (
        "### SNIP + ReFer combinations (validation split)\n\n"
        f"`python benchmarks/combination_study.py`: seeds {args.seeds}, validation = "
        f"{VALIDATION_FRACTION:.0%} of each training split, the grid's scoring and fine-tuning; "
        f"{args.workers} worker(s), 1 thread each; wall time {wall / 60:.0f} min.{done}\n\n"
        + summarise(results)
    )
    (out / "combination.md").write_text(table)
    return table


def _key(run: dict) -> tuple:
    return (run["task"], run["seed"], run["sparsity"], run["candidate"])


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    jobs = plan(args)
    results, saved, prior_wall = [], Path(args.output_dir) / "combination.json", 0.0
    if args.resume and saved.is_file():  # keep the runs of an interrupted study, do the rest
        previous = json.loads(saved.read_text())
        results, prior_wall = previous["runs"], previous["meta"]["wall_seconds"]
        done = {_key(r) for r in results}
        jobs = [job for job in jobs if _key(job) not in done]
    planned = len(results) + len(jobs)
    print(f"{len(jobs)} runs on {args.workers} worker(s)", flush=True)
    start = time.perf_counter()
    table = write_outputs(results, args, prior_wall, planned)
    with contextlib.ExitStack() as stack:
        if args.workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(args.workers))
            runs = pool.imap_unordered(run_job, jobs)
        else:
            runs = map(run_job, jobs)
        for r in runs:
            results.append(r)
            print(
                f"[{len(results)}/{planned}] {r['task']} seed {r['seed']} {r['candidate']} "
                f"{r['sparsity']:.0%}: {100 * r['accuracy']:.1f}% ({r['seconds']:.0f}s)",
                flush=True,
            )
            table = write_outputs(results, args, prior_wall + time.perf_counter() - start, planned)
    print(table)
    return results


if __name__ == "__main__":
    main()
