"""Tables and plot of `benchmarks/replicate.py` (results.md, results.png) from its raw runs."""

from __future__ import annotations

import statistics
from pathlib import Path

COMBINATION = "refer_snip_log_z"
# Paired comparisons: (first, second) labels; wins = seeds where the first is better.
PAIRS = (
    ("afr", "snip"),
    ("afr", "refer"),
    ("refer", "snip"),
    (COMBINATION, "refer"),
    (COMBINATION, "snip"),
    ("afr", "magnitude"),
)


def label(r: dict) -> str:
    """A run's row name: the method, its control in brackets, the token-mean ablation."""
    name = r["method"]
    if r.get("control"):
        name += f" [{r['control']}]"
    return name + (" (token mean)" if r.get("feature_token") == "mean" else "")


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def _sparsities(rows: list[dict]) -> list[float]:
    return sorted({r["sparsity"] for r in rows if r["method"] != "dense"})


def accuracy_tables(results: list[dict]) -> list[str]:
    """Per task: mean ± std accuracy over seeds per method (rows) and sparsity (columns)."""
    lines = []
    for task in sorted({r["task"] for r in results}):
        rows = [r for r in results if r["task"] == task]
        sparsities = _sparsities(rows)
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
            lines.append("| dense | " + " | ".join([_cell(dense)] * len(sparsities)) + " |")
        for name in dict.fromkeys(label(r) for r in rows if r["method"] != "dense"):
            cells = []
            for s in sparsities:
                runs = [r for r in rows if label(r) == name and r["sparsity"] == s]
                if not runs:
                    cells.append("—")
                    continue
                full = statistics.mean(len(r["fully_pruned"]) for r in runs)
                cells.append(f"{_cell([100 * r['accuracy'] for r in runs])} [{full:.2g}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _pairs(labels: set[str]) -> list[tuple[str, str]]:
    pairs = [(a, b) for a, b in PAIRS if a in labels and b in labels]
    for name in sorted(labels):  # every criterion against its controls
        if " [" in name:
            base = name.split(" [")[0]
            if base in labels:
                pairs.append((base, name))
    return pairs


def paired_differences(results: list[dict]) -> list[str]:
    """Accuracy differences between methods on the same (task, seed): the same scoring batches,
    head and recipe, so seed-to-seed noise common to both cancels."""
    acc = {(r["task"], r["seed"], label(r), r["sparsity"]): 100 * r["accuracy"] for r in results}
    sparsities = _sparsities(results)
    pairs = _pairs({key[2] for key in acc})
    if not pairs:
        return []
    lines = [
        "#### Paired differences (accuracy points, mean over seeds; in brackets: wins / seeds, "
        "a win = the first method is better on that seed)",
        "",
        "| task | comparison | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|---|" + "---:|" * len(sparsities),
    ]
    for task in sorted({key[0] for key in acc}):
        seeds = sorted({key[1] for key in acc if key[0] == task})
        for a, b in pairs:
            cells, any_pair = [], False
            for s in sparsities:
                diffs = [
                    acc[task, seed, a, s] - acc[task, seed, b, s]
                    for seed in seeds
                    if (task, seed, a, s) in acc and (task, seed, b, s) in acc
                ]
                any_pair |= bool(diffs)
                wins = sum(d > 0 for d in diffs)
                cells.append(
                    f"{statistics.mean(diffs):+.1f} ({wins}/{len(diffs)})" if diffs else "—"
                )
            if any_pair:
                lines.append(f"| {task} | {a} − {b} | " + " | ".join(cells) + " |")
    return lines + [""]


def shrink_table(results: list[dict]) -> list[str]:
    """Per method and sparsity: encoder Linear multiply-adds and MLP hidden units that exact
    shrinking removes from the masks (mean over tasks and seeds)."""
    runs = [r for r in results if "shrink" in r and not r.get("control")]
    if not runs:
        return []
    sparsities = _sparsities(runs)
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


def score_statistics_table(results: list[dict]) -> list[str]:
    stats = [r for r in results if "score_stats" in r and not r.get("control")]
    if not stats:
        return []
    lines = [
        "#### Score statistics (z-scored over all prunable weights, mean over runs)",
        "",
        "| criterion | skew | max z |",
        "|---|---:|---:|",
    ]
    for method in dict.fromkeys(r["method"] for r in stats):
        sel = [r["score_stats"] for r in stats if r["method"] == method]
        lines.append(
            f"| {method} | {statistics.mean(s['skew'] for s in sel):.1f} | "
            f"{statistics.mean(s['max_z'] for s in sel):.0f} |"
        )
    return lines + [""]


def summarise(results: list[dict]) -> str:
    lines = accuracy_tables(results) + paired_differences(results)
    full = sorted({(label(r), name) for r in results for name in r.get("fully_pruned", [])})
    if full:
        lines += ["Weight tensors pruned to 100% in some run:", ""]
        lines += [f"- {name} ({method})" for method, name in full]
        lines.append("")
    lines += shrink_table(results) + score_statistics_table(results)
    return "\n".join(lines)


def header(meta: dict) -> str:
    a = meta["args"]
    model = Path(a["model"]).name
    return (
        "### Replication on the offline proxy\n\n"
        f"`python benchmarks/replicate.py`: model `{model}`, seeds {a['seeds']}, "
        f"{a['num_batches']} scoring batches of {a['scoring_batch_size']} images, fine-tuning "
        f"{a['epochs']} epochs AdamW lr {a['lr']:g} batch {a['batch_size']} (cosine), masks "
        f"kept by `enforce_masks`; global sparsity over the encoder Linear weights, CLS "
        f"features unless noted; [control] = a sanity-check control of the criterion's masks. "
        f"torch {meta['torch']}, {a['workers']} worker process(es), "
        f"{meta['threads_per_worker']} thread each; {_runs_and_time(meta)}.\n\n"
    )


def _runs_and_time(meta: dict) -> str:
    minutes = meta["wall_seconds"] / 60
    resumed = meta.get("resumed") or 0
    if not resumed:
        return f"{meta['runs']} runs, wall time {minutes:.0f} min"
    earlier = meta.get("wall_seconds_earlier")
    earlier = "" if earlier is None else f" (wall time {earlier / 60:.0f} min)"
    return (
        f"{meta['runs']} runs: {resumed} from an earlier invocation{earlier}, "
        f"{meta['runs'] - resumed} more in {minutes:.0f} min (`--resume`)"
    )


def plot(results: list[dict], path: Path) -> None:
    """Accuracy against sparsity per task (criteria without controls), dense as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results if r["task"] == task and not r.get("control")]
        sparsities = _sparsities(rows)
        dense = [100 * r["accuracy"] for r in rows if r["method"] == "dense"]
        if dense:
            ax.axhline(statistics.mean(dense), color="gray", ls="--", label="dense")
        for name in dict.fromkeys(label(r) for r in rows if r["method"] != "dense"):
            means, stds = [], []
            for s in sparsities:
                acc = [100 * r["accuracy"] for r in rows if label(r) == name and r["sparsity"] == s]
                means.append(statistics.mean(acc) if acc else float("nan"))
                stds.append(statistics.pstdev(acc) if acc else 0.0)
            ax.errorbar(
                [100 * s for s in sparsities],
                means,
                yerr=stds,
                ls="--" if "mean" in name else "-",
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_title(task)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("accuracy after fine-tuning (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
