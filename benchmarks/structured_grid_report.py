"""Tables of `benchmarks/structured_grid.py` (structured_grid.md) from its raw runs."""

from __future__ import annotations

import statistics
from pathlib import Path

BASELINES = ("magnitude", "snip", "refer", "random", "afr_unstructured")
GOAL_BASELINES = ("magnitude", "snip")  # the goal: afr ahead in >= 2/3 paired runs
GOAL = 2 / 3


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def _sparsities(runs: list[dict]) -> list[float]:
    return sorted({r["sparsity"] for r in runs if r["method"] != "dense"})


def _methods(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in runs if r["method"] != "dense"))


def accuracy_tables(runs: list[dict]) -> list[str]:
    """Per task: mean ± std accuracy over seeds, methods (rows) by sparsity (columns)."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in runs):
        rows = [r for r in runs if r["task"] == task]
        sparsities, seeds = _sparsities(rows), sorted({r["seed"] for r in rows})
        lines += [
            f"#### {task}: accuracy % after fine-tuning (mean ± std over seeds {seeds})",
            "",
            "| method | " + " | ".join(f"{s:.0%} removed" for s in sparsities) + " |",
            "|---|" + "---:|" * len(sparsities),
        ]
        dense = [100 * r["accuracy"] for r in rows if r["method"] == "dense"]
        if dense:
            cell = f"{_mean_std(dense)} (n={len(dense)})"
            lines.append("| dense | " + " | ".join([cell] * len(sparsities)) + " |")
        for method in _methods(rows):
            cells = []
            for s in sparsities:
                acc = [
                    100 * r["accuracy"]
                    for r in rows
                    if r["method"] == method and r["sparsity"] == s
                ]
                cells.append(f"{_mean_std(acc)} (n={len(acc)})" if acc else "—")
            lines.append(f"| {_name(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _name(method: str) -> str:
    if method == "afr_unstructured":
        return "afr unstructured + shrink (equal latency)"
    return f"{method} (structured)"


def _pairs(runs: list[dict], baseline: str) -> dict[tuple, float]:
    """(task, sparsity, seed) -> accuracy points of structured afr minus `baseline`."""
    acc = {(r["task"], r["sparsity"], r["seed"], r["method"]): 100 * r["accuracy"] for r in runs}
    return {
        (task, s, seed): a - acc[task, s, seed, baseline]
        for (task, s, seed, method), a in acc.items()
        if method == "afr" and (task, s, seed, baseline) in acc
    }


def paired_table(runs: list[dict]) -> list[str]:
    """afr (structured) minus each baseline on the same (task, seed, sparsity)."""
    baselines = [b for b in BASELINES if any(r["method"] == b for r in runs)]
    sparsities = _sparsities(runs)
    lines = [
        "#### Paired differences: structured afr − baseline (accuracy points, mean over seeds; "
        "in brackets wins / paired runs, a win = afr strictly better on that seed)",
        "",
        "| task | baseline | " + " | ".join(f"{s:.0%}" for s in sparsities) + " | all |",
        "|---|---|" + "---:|" * (len(sparsities) + 1),
    ]
    for task in dict.fromkeys(r["task"] for r in runs):
        for b in baselines:
            diffs = {k: d for k, d in _pairs(runs, b).items() if k[0] == task}
            if not diffs:
                continue
            cells = [_diff_cell([d for k, d in diffs.items() if k[1] == s]) for s in sparsities]
            cells.append(_diff_cell(list(diffs.values())))
            lines.append(f"| {task} | {_name(b)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _diff_cell(diffs: list[float]) -> str:
    if not diffs:
        return "—"
    return f"{statistics.mean(diffs):+.1f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def goal_lines(runs: list[dict]) -> list[str]:
    """The issue's goal: structured afr ahead of magnitude and of SNIP in >= 2/3 paired runs."""
    lines = [
        "#### Goal: structured afr ahead of magnitude and of snip in >= 2/3 of paired runs",
        "",
    ]
    for b in GOAL_BASELINES:
        diffs = list(_pairs(runs, b).values())
        if not diffs:
            continue
        wins = sum(d > 0 for d in diffs)
        verdict = "met" if wins >= GOAL * len(diffs) else "not met"
        lines.append(
            f"- afr vs {b}: {wins}/{len(diffs)} paired runs won ({wins / len(diffs):.0%}), "
            f"mean difference {statistics.mean(diffs):+.1f} points: **{verdict}**"
        )
    return lines + [""]


def speed_table(runs: list[dict]) -> list[str]:
    """Measured speed-ups over the dense model (fastest call, side by side, before fine-tuning)
    and the encoder Linear multiply-adds kept, mean over tasks and seeds."""
    timed = [r for r in runs if "speedup" in r]
    if not timed:
        return []
    sparsities = _sparsities(timed)
    batch = timed[0]["latency_batch"]
    lines = [
        f"#### Speed over the dense model (batch {batch}, 1 thread, fastest-call ratio) and "
        "encoder Linear multiply-adds kept, mean over tasks and seeds",
        "",
        "| method | " + " | ".join(f"{s:.0%} removed" for s in sparsities) + " |",
        "|---|" + "---:|" * len(sparsities),
    ]
    for method in _methods(timed):
        cells = []
        for s in sparsities:
            sel = [r for r in timed if r["method"] == method and r["sparsity"] == s]
            if not sel:
                cells.append("—")
                continue
            speed = statistics.mean(r["speedup"] for r in sel)
            kept = statistics.mean(r["linear_weights_kept"] for r in sel)
            cell = f"{speed:.2f}x, {kept:.0%} MACs"
            if method == "afr_unstructured":
                structured = statistics.mean(r["structured_speedup"] for r in sel)
                sparsity = statistics.mean(r["unstructured_sparsity"] for r in sel)
                cell += f" at {sparsity:.1%} sparsity (structured afr {structured:.2f}x)"
            cells.append(cell)
        lines.append(f"| {_name(method)} | " + " | ".join(cells) + " |")
    return lines + [""]


def widths_table(runs: list[dict]) -> list[str]:
    """Heads and MLP units kept per layer (mean over tasks and seeds)."""
    shaped = [r for r in runs if r.get("heads")]
    if not shaped:
        return []
    lines = [
        "#### Kept heads / MLP units per layer (mean over tasks and seeds)",
        "",
        "| method | sparsity | heads per layer | MLP units per layer |",
        "|---|---:|---|---|",
    ]
    for method in _methods(shaped):
        for s in _sparsities(shaped):
            sel = [r for r in shaped if r["method"] == method and r["sparsity"] == s]
            if not sel:
                continue
            heads = " / ".join(f"{statistics.mean(h):.1f}" for h in zip(*(r["heads"] for r in sel)))
            units = " / ".join(
                f"{statistics.mean(u):.0f}" for u in zip(*(r["mlp_units"] for r in sel))
            )
            lines.append(f"| {method} | {s:.0%} | {heads} | {units} |")
    return lines + [""]


def report(runs: list[dict], meta: dict) -> str:
    a = meta["args"]
    partial = meta["runs"] < meta["planned"]
    title = "### Structured pruning grid" + (" (PARTIAL)" if partial else "")
    head = (
        f"{title}\n\n`{meta.get('command', 'python benchmarks/structured_grid.py')}` with "
        f"tasks {a['tasks']}, seeds "
        f"{a['seeds']}, sparsities {a['sparsities']}: model `{Path(a['model']).name}`, "
        f"{a['num_batches']} scoring batches of {a['scoring_batch_size']} images, fine-tuning "
        f"{a['epochs']} epochs AdamW lr {a['lr']:g} batch {a['batch_size']} (cosine), "
        f"structure heads+mlp, group_ranking {a.get('group_ranking', 'per_kind')}, scored "
        f"through {'the new random head' if a.get('no_fit_head', True) else 'a fitted head'}, "
        f"feature_token {a.get('feature_token', 'auto')}, ReFer features "
        f"{'uncentred' if a.get('no_feature_center', True) else 'centred'}, rounds "
        f"{a.get('rounds', 1)}; "
        f"torch {meta['torch']}, {a['workers']} worker process(es) of one "
        f"thread; {meta['runs']} of {meta['planned']} planned runs"
        + (f" ({meta['resumed']} from earlier invocations)" if meta.get("resumed") else "")
        + (
            f", {meta['wall_seconds'] / 60:.0f} min in the last invocation"
            if meta.get("wall_seconds")
            else ""
        )
        + ".\n"
    )
    lines = [head]
    if partial:
        lines.append(
            f"**Partial**: {meta['planned'] - meta['runs']} planned runs are missing; "
            "every table counts only the runs present (n per cell).\n"
        )
    lines += goal_lines(runs) + accuracy_tables(runs) + paired_table(runs)
    lines += speed_table(runs) + widths_table(runs)
    return "\n".join(lines)
