"""Does AFR beat SNIP? The paper's comparison on a small offline proxy.

The embedded glyph-pretrained tiny ViT (`hf_afr.DEFAULT_MODEL`) plays ViT-B/16, and two real
downstream tasks play CIFAR/Tiny-ImageNet:

- `digits`: scikit-learn's handwritten digits (1797 real 8x8 scans, upsampled), 10 classes;
- `cyrillic`: Cyrillic letters, a script absent from pretraining, trained on the training
  fonts and tested on held-out fonts.

For every (task, seed) all methods see the same scoring batches, the same new classifier head
and the same fine-tuning recipe (AdamW, cosine schedule, masks kept by `enforce_masks`).
Methods: dense, random, magnitude, snip, refer, afr; plus refer/afr with token-mean features
(ablation of the CLS default). Runs are spread over worker processes with one thread each.

    python benchmarks/replicate.py                # full grid (132 runs, about 40 min on 2 cores)
    python benchmarks/replicate.py --quick        # digits, one seed, 95/98% (a few minutes)

Writes `results.json` (raw runs), `results.md` (mean +- std table, paired differences) and
`results.png` to `--output_dir` (default `benchmarks/results/`); `--tabulate_only` rewrites
the table and plot from an existing `results.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

METHODS = ("dense", "random", "magnitude", "snip", "refer", "afr")
ABLATION = ("refer", "afr")  # also run with feature_token="mean"
TASKS = ("digits", "cyrillic")


@functools.cache
def load_task(task: str) -> dict[str, torch.Tensor]:
    """Train/test tensors normalised as the model's processor does (x / 127.5 - 1)."""
    from hf_afr.data import digits_arrays, glyph_arrays, glyph_class_names

    if task == "digits":
        (xtr, ytr), (xte, yte) = digits_arrays("train"), digits_arrays("test")
        names = [str(d) for d in range(10)]
    elif task == "cyrillic":
        xtr, ytr = glyph_arrays("cyrillic", "train", samples_per_class=40, seed=1)
        xte, yte = glyph_arrays("cyrillic", "test", samples_per_class=20, seed=2)
        names = glyph_class_names("cyrillic")
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


def run_job(job: dict) -> dict:
    """Prune (unless dense), fine-tune and evaluate one (task, seed, method, sparsity) cell."""
    from transformers.utils import logging

    from hf_afr import AFRPruner, PrunerConfig, select_masks

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
    )
    pruner = AFRPruner.from_pretrained(job["model"], config, id2label=id2label)
    result = dict(job)
    masks = None
    if method != "dense":
        generator = torch.Generator().manual_seed(10_000 + job["seed"])
        idx = torch.randperm(len(data["ytr"]), generator=generator)
        bs = job["scoring_batch_size"]
        batches = [
            {
                "pixel_values": data["xtr"][idx[i * bs : (i + 1) * bs]],
                "labels": data["ytr"][idx[i * bs : (i + 1) * bs]],
            }
            for i in range(job["num_batches"])
        ]
        t0 = time.perf_counter()
        scores = pruner.compute_scores(batches, show_progress=False)
        result["scoring_seconds"] = time.perf_counter() - t0
        result["score_stats"] = score_statistics(scores)
        pruner.set_masks(select_masks(scores, config.sparsity, config.scope))
        report = pruner.sparsity_report()
        result["sparsity_measured"] = report.sparsity
        result["fully_pruned"] = report.fully_pruned
        result["shrink"] = shrink_statistics(pruner.model)
        masks = pruner.masks
    fine_tune(pruner.model, data, job["seed"], job["epochs"], job["batch_size"], job["lr"], masks)
    result["accuracy"] = accuracy(pruner.model, data)
    result["seconds"] = time.perf_counter() - start
    return result


def plan(args) -> list[dict]:
    base = {
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_batches": args.num_batches,
        "scoring_batch_size": args.scoring_batch_size,
    }
    jobs = []
    for task in args.tasks:
        for seed in args.seeds:
            jobs.append(
                {
                    **base,
                    "task": task,
                    "seed": seed,
                    "method": "dense",
                    "sparsity": 0.0,
                    "feature_token": "cls",
                }
            )
            for sparsity in args.sparsities:
                for method in args.methods:
                    if method == "dense":
                        continue
                    jobs.append(
                        {
                            **base,
                            "task": task,
                            "seed": seed,
                            "method": method,
                            "sparsity": sparsity,
                            "feature_token": "cls",
                        }
                    )
                    if args.ablation and method in ABLATION:
                        jobs.append(
                            {
                                **base,
                                "task": task,
                                "seed": seed,
                                "method": method,
                                "sparsity": sparsity,
                                "feature_token": "mean",
                            }
                        )
    return jobs


def label(r: dict) -> str:
    return r["method"] + (" (token mean)" if r["feature_token"] == "mean" else "")


def summarise(results: list[dict], sparsities: list[float]) -> str:
    lines = []
    for task in sorted({r["task"] for r in results}):
        rows = [r for r in results if r["task"] == task]
        seeds = sorted({r["seed"] for r in rows})
        lines += [
            f"#### {task} (accuracy %, mean ± std over {len(seeds)} seeds; "
            "[k] = weight tensors pruned to 100%, mean)",
            "",
            "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
            "|---|" + "---:|" * len(sparsities),
        ]
        dense = [100 * r["accuracy"] for r in rows if r["method"] == "dense"]
        if dense:
            cell = f"{statistics.mean(dense):.1f} ± {statistics.pstdev(dense):.1f}"
            lines.append("| dense | " + " | ".join([cell] * len(sparsities)) + " |")
        for name in dict.fromkeys(label(r) for r in rows if r["method"] != "dense"):
            cells = []
            for s in sparsities:
                cell_runs = [r for r in rows if label(r) == name and r["sparsity"] == s]
                if not cell_runs:
                    cells.append("—")
                    continue
                acc = [100 * r["accuracy"] for r in cell_runs]
                full = statistics.mean(len(r["fully_pruned"]) for r in cell_runs)
                cells.append(
                    f"{statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} [{full:.2g}]"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += paired_differences(results, sparsities)
    full = sorted(
        {(label(r), name) for r in results for name in r.get("fully_pruned", [])},
    )
    if full:
        lines += ["Weight tensors pruned to 100% in some run:", ""]
        lines += [f"- {name} ({method})" for method, name in full]
        lines.append("")
    lines += shrink_table(results, sparsities)
    stats = [
        r
        for r in results
        if "score_stats" in r and r["method"] in ("snip", "refer") and r["feature_token"] == "cls"
    ]
    if stats:
        lines += [
            "#### Score statistics (z-scored, mean over runs)",
            "",
            "| criterion | skew | max z |",
            "|---|---:|---:|",
        ]
        for method in ("snip", "refer"):
            sel = [r["score_stats"] for r in stats if r["method"] == method]
            if sel:
                lines.append(
                    f"| {method} | {statistics.mean(s['skew'] for s in sel):.1f} | "
                    f"{statistics.mean(s['max_z'] for s in sel):.0f} |"
                )
        lines.append("")
    return "\n".join(lines)


def shrink_table(results: list[dict], sparsities: list[float]) -> list[str]:
    """Per method and sparsity: encoder Linear multiply-adds and MLP hidden units that exact
    shrinking removes from the masks (mean over tasks and seeds); structure worth as much as
    accuracy when the model is to run faster."""
    runs = [r for r in results if "shrink" in r]
    if not runs:
        return []
    lines = [
        "#### Exact shrinking of the masks (`hf_afr.shrink`): encoder Linear multiply-adds "
        "removed, and MLP hidden units removed per layer (mean over tasks and seeds)",
        "",
        "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|" + "---:|" * len(sparsities),
    ]
    for name in dict.fromkeys(label(r) for r in runs):
        cells = []
        for s in sparsities:
            sel = [r["shrink"] for r in runs if label(r) == name and r["sparsity"] == s]
            if not sel:
                cells.append("—")
                continue
            units = zip(*(x["mlp_units_removed"] for x in sel))
            per_layer = " / ".join(f"{statistics.mean(u):.0%}" for u in units)
            cells.append(f"{statistics.mean(x['macs_reduction'] for x in sel):.1%} ({per_layer})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


PAIRS = (("afr", "snip"), ("afr", "refer"), ("refer", "snip"), ("afr", "magnitude"))


def paired_differences(results: list[dict], sparsities: list[float]) -> list[str]:
    """Accuracy differences between methods on the same (task, seed): the same scoring batches,
    head and recipe, so seed-to-seed noise common to both cancels."""
    cls = {
        (r["task"], r["seed"], r["method"], r["sparsity"]): 100 * r["accuracy"]
        for r in results
        if r["feature_token"] == "cls"
    }
    methods = {m for (_, _, m, _) in cls}
    pairs = [(a, b) for a, b in PAIRS if a in methods and b in methods]
    if not pairs:
        return []
    lines = [
        "#### Paired differences (accuracy points, mean over seeds; wins = seeds where the first "
        "method is better)",
        "",
        "| task | comparison | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|---|" + "---:|" * len(sparsities),
    ]
    for task in sorted({t for (t, _, _, _) in cls}):
        seeds = sorted({seed for (t, seed, _, _) in cls if t == task})
        for a, b in pairs:
            cells = []
            for s in sparsities:
                diffs = [
                    cls[task, seed, a, s] - cls[task, seed, b, s]
                    for seed in seeds
                    if (task, seed, a, s) in cls and (task, seed, b, s) in cls
                ]
                wins = sum(d > 0 for d in diffs)
                cells.append(
                    f"{statistics.mean(diffs):+.1f} ({wins}/{len(diffs)})" if diffs else "—"
                )
            lines.append(f"| {task} | {a} − {b} | " + " | ".join(cells) + " |")
    return lines + [""]


def header(meta: dict) -> str:
    a = meta["args"]
    model = Path(a["model"]).name
    return (
        "### Replication on the offline proxy\n\n"
        f"`python benchmarks/replicate.py`: model `{model}`, {len(a['seeds'])} seeds, "
        f"{a['num_batches']} scoring batches of {a['scoring_batch_size']} images, fine-tuning "
        f"{a['epochs']} epochs AdamW lr {a['lr']:g} batch {a['batch_size']} (cosine), masks "
        f"kept by `enforce_masks`; global sparsity over the encoder Linear weights, CLS "
        f"features unless noted. torch {meta['torch']}, {a['workers']} worker process(es), "
        f"{meta['threads_per_worker']} thread each; wall time {meta['wall_seconds'] / 60:.0f} "
        "min.\n\n"
    )


def plot(results: list[dict], sparsities: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results if r["task"] == task]
        dense = [100 * r["accuracy"] for r in rows if r["method"] == "dense"]
        if dense:
            ax.axhline(statistics.mean(dense), color="gray", ls="--", label="dense")
        for name in dict.fromkeys(label(r) for r in rows if r["method"] != "dense"):
            means, stds = [], []
            for s in sparsities:
                acc = [100 * r["accuracy"] for r in rows if label(r) == name and r["sparsity"] == s]
                means.append(statistics.mean(acc) if acc else float("nan"))
                stds.append(statistics.pstdev(acc) if acc else 0.0)
            style = "--" if "mean" in name else "-"
            ax.errorbar(
                [100 * s for s in sparsities],
                means,
                yerr=stds,
                ls=style,
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_title(task)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("accuracy after fine-tuning (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    from hf_afr import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, seed 0, 95/98%%")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--no_ablation",
        dest="ablation",
        action="store_false",
        help="skip the token-mean feature ablation",
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="pretrained ViT to prune")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num_batches", type=int, default=4, help="scoring batches")
    p.add_argument("--scoring_batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--tabulate_only",
        action="store_true",
        help="rewrite results.md and results.png from --output_dir/results.json (no runs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.sparsities = ["digits"], [0], [0.95, 0.98]
    return args


def write_outputs(results: list[dict], meta: dict, out: Path) -> str:
    sparsities = sorted(meta["args"]["sparsities"])
    table = header(meta) + summarise(results, sparsities)
    (out / "results.md").write_text(table)
    plot(results, sparsities, out / "results.png")
    return table


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.tabulate_only:
        out = Path(args.output_dir)
        saved = json.loads((out / "results.json").read_text())
        print(write_outputs(saved["runs"], saved["meta"], out))
        return saved["runs"]
    jobs = plan(args)
    print(f"{len(jobs)} runs on {args.workers} worker(s)", flush=True)
    start = time.perf_counter()
    results = []
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for r in pool.imap_unordered(run_job, jobs):
                results.append(r)
                print(
                    f"[{len(results)}/{len(jobs)}] {r['task']} seed {r['seed']} {label(r)} "
                    f"{r['sparsity']:.0%}: {100 * r['accuracy']:.1f}% ({r['seconds']:.0f}s)",
                    flush=True,
                )
    else:
        for job in jobs:
            results.append(run_job(job))
    results.sort(
        key=lambda r: (
            r["task"],
            r["seed"],
            METHODS.index(r["method"]),
            r["feature_token"],
            r["sparsity"],
        )
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "args": {k: v for k, v in vars(args).items()},
        "wall_seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "threads_per_worker": 1,
    }
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": results}, indent=1, default=float)
    )
    print(write_outputs(results, meta, out))
    print(f"wall time {meta['wall_seconds']:.0f}s; wrote {out}/results.{{json,md,png}}")
    return results


if __name__ == "__main__":
    main()
