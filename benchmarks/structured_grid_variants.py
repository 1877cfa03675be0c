"""The structured grid's scoring variants side by side: ranking, head, features, rounds, batches.

`benchmarks/structured_grid.py` writes one result file per variant (`structured_grid.json`,
`structured_grid-per_layer.json`, `structured_grid-no_fit_head.json`, ...). This script reads
every one in `--results_dir` and tabulates, per variant, the mean accuracy of structured AFR,
SNIP and magnitude and AFR's paired wins against the other two (the goal of the grid). Runs are
paired by (task, seed, sparsity), each baseline's runs taken from the variant that made the choices
it depends on (`CHOICES`: magnitude's runs of a ranking and rounds serve every head, ReFer
feature and batch count).

    python benchmarks/structured_grid_variants.py   # writes structured_grid_variants.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_afr.config import GROUP_RANKINGS

COMPARED = ("afr", "snip", "magnitude")
# A variant's choices, their defaults (runs saved before a choice existed made the default one),
# and the methods each choice changes: magnitude reads neither the loss, the head, the features
# nor the batches, so its runs of a ranking and rounds serve every other choice.
CHOICES = {
    "group_ranking": ("per_kind", ("afr", "snip", "magnitude")),
    "fit_head": (False, ("afr", "snip")),
    "feature_token": ("auto", ("afr",)),
    "feature_center": (False, ("afr",)),
    "rounds": (1, ("afr", "snip", "magnitude")),
    "num_batches": (4, ("afr", "snip")),
}


def _choice(run: dict, name: str):
    value = run.get(name, CHOICES[name][0])
    if name == "feature_token" and value == "auto":
        return "cls"  # what the ViT's head reads
    if name in ("fit_head", "feature_center"):
        return value is not False  # None: on with a structure
    return value


def variant_runs(results_dir: Path) -> dict[tuple, dict[tuple, float]]:
    """Accuracy by (task, seed, method, sparsity) for every variant (one value per choice of
    `CHOICES`) in which structured AFR ran, with the snip and magnitude runs that share the
    choices each of them depends on."""
    runs = [
        run
        for path in sorted(results_dir.glob("structured_grid*.json"))
        for run in json.loads(path.read_text())["runs"]
        if run["method"] in COMPARED
    ]
    variants: dict[tuple, dict[tuple, float]] = {}
    for key in {tuple(_choice(r, c) for c in CHOICES) for r in runs if r["method"] == "afr"}:
        wanted = dict(zip(CHOICES, key))
        variants[key] = {
            (r["task"], r["seed"], r["method"], r["sparsity"]): r["accuracy"]
            for r in runs
            if all(
                _choice(r, c) == wanted[c]
                for c, (_, methods) in CHOICES.items()
                if r["method"] in methods
            )
        }
    return variants


def paired(runs: dict[tuple, float], baseline: str) -> tuple[int, int, float]:
    """AFR's wins over `baseline`, the number of pairs and the mean difference in points."""
    diffs = [
        acc - runs[(task, seed, baseline, sparsity)]
        for (task, seed, method, sparsity), acc in runs.items()
        if method == "afr" and (task, seed, baseline, sparsity) in runs
    ]
    wins = sum(d > 0 for d in diffs)
    return wins, len(diffs), 100 * sum(diffs) / max(len(diffs), 1)


def table(variants: dict[tuple, dict[tuple, float]]) -> str:
    lines = [
        "| group ranking | head scored through | ReFer features | rounds | scoring batches "
        "| runs | afr | snip | magnitude | afr vs magnitude | afr vs snip |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(
        variants,
        key=lambda v: (GROUP_RANKINGS.index(v[0]), not v[1], not v[3], v[2] != "cls", v[4], v[5]),
    )
    for key in order:
        ranking, fitted, token, centred, rounds, num_batches = key
        runs = variants[key]
        afr = [(t, s, p) for (t, s, m, p) in runs if m == "afr"]
        full = [c for c in afr if all((c[0], c[1], m, c[2]) in runs for m in COMPARED)]
        if not full:
            continue
        mean = {m: 100 * sum(runs[(t, s, m, p)] for t, s, p in full) / len(full) for m in COMPARED}
        cells = set(full)
        common = {k: v for k, v in runs.items() if (k[0], k[1], k[3]) in cells}
        vs = {b: paired(common, b) for b in ("magnitude", "snip")}
        lines.append(
            f"| {ranking} | {'fitted' if fitted else 'new, random'} "
            f"| {token}, {'centred' if centred else 'uncentred'} | {rounds} "
            f"| {num_batches} | {len(full)} "
            + "".join(f"| {mean[m]:.1f} " for m in COMPARED)
            + "".join(f"| {w}/{n} ({d:+.1f}) " for w, n, d in vs.values())
            + "|"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results_dir", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    results = Path(args.results_dir)
    if not any(results.glob("structured_grid*.json")):
        p.error(f"no structured_grid*.json in {results}: run benchmarks/structured_grid.py first")
    text = (
        "# Structured grid: scoring variants side by side\n\n"
        "`python benchmarks/structured_grid_variants.py`: every `structured_grid*.json` in "
        f"`{results.name}/`. Mean accuracy (%) over the (task, seed, sparsity) cells where afr, "
        "snip and magnitude all ran; afr's paired wins over each (mean difference in points).\n\n"
        + table(variant_runs(results))
        + "\n"
    )
    (results / "structured_grid_variants.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
