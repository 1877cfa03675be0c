"""How heads and MLP units are ranked: per kind (hf_afr's choice), per layer or pooled.

The embedded tiny ViT (`hf_afr.DEFAULT_MODEL`, 4 blocks of 4 heads and 512 units) is pruned
with `structure="heads+mlp"` on the embedded digits task, without fine-tuning, three ways (the
data-driven criteria scoring through fitted heads, `fit_head`, as `prune` does):

- `per_kind` (`PrunerConfig(group_ranking="per_kind")`, the default): heads ranked with heads,
  units with units, each kind losing the same fraction of its weights;
- `per_layer` (`group_ranking="per_layer"`): as `per_kind`, every block losing that fraction;
- `pooled` (`group_ranking="pooled"`): one ranking of all groups by the same per-weight scores
  (for AFR the z-scores are taken over all groups together), the lowest removed until the
  budget is reached.

For each it reports the fraction of head and unit weights removed and a linear-probe accuracy
(ridge regression on the features the classifier reads, fit on the training images, scored on
the test images): how much of the pretrained representation is left before fine-tuning.

    python benchmarks/structured_ranking.py [--sparsities 0.3 0.5 0.7] [--methods snip afr]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from transformers.utils import logging

from hf_afr import DEFAULT_MODEL, AFRPruner, PrunerConfig
from hf_afr.config import GROUP_RANKINGS
from hf_afr.criteria.head_fit import scoring_head
from hf_afr.data import digits_arrays
from hf_afr.files import atomic_write_text
from hf_afr.structure.budget import select_groups
from hf_afr.structure.groups import block_groups
from hf_afr.structure.prune import apply_plan
from hf_afr.structure.scores import group_scores

KINDS = ("heads", "units")


def images(split: str, limit: int):
    x, y = digits_arrays(split)
    x = torch.from_numpy(x[:limit]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(y[:limit]).long()


def features(model, x: torch.Tensor) -> torch.Tensor:
    grabbed = []
    handle = model.classifier.register_forward_pre_hook(lambda m, a: grabbed.append(a[0]))
    with torch.no_grad():
        for i in range(0, len(x), 256):
            model(pixel_values=x[i : i + 256])
    handle.remove()
    return torch.cat(grabbed).double()


def probe_accuracy(model, train, test, ridge: float = 1e-2) -> float:
    xtr, xte = features(model, train[0]), features(model, test[0])
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ones = torch.nn.functional.one_hot(train[1], 10).double()
    w = torch.linalg.solve(xtr.T @ xtr + ridge * len(xtr) * torch.eye(xtr.shape[1]), xtr.T @ ones)
    return float(((xte @ w).argmax(1) == test[1]).double().mean())


def removed_fractions(groups, plan) -> tuple[float, float]:
    out = []
    for kind in KINDS:
        owned = sum(g.count(kind) * g.cost(kind) for g in groups)
        gone = sum((g.count(kind) - len(plan.kept(kind)[g.name])) * g.cost(kind) for g in groups)
        out.append(gone / owned)
    return out[0], out[1]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=["snip", "refer", "afr", "magnitude"])
    p.add_argument("--train_images", type=int, default=2000)
    p.add_argument("--test_images", type=int, default=1000)
    p.add_argument("--output", default="benchmarks/results/structured_ranking.md")
    args = p.parse_args(argv)
    logging.set_verbosity_error()
    torch.manual_seed(0)
    base = AFRPruner.from_pretrained(DEFAULT_MODEL, num_labels=10).model.eval()
    train, test = images("train", args.train_images), images("test", args.test_images)
    batches = [
        {"pixel_values": train[0][i : i + 64], "labels": train[1][i : i + 64]}
        for i in range(0, 256, 64)
    ]
    groups = block_groups(base)
    total = sum(g.count(k) * g.cost(k) for g in groups for k in KINDS)
    rows = [
        "| method | sparsity | ranking | head weights removed | unit weights removed | linear probe |",
        "|---|---:|---|---:|---:|---:|",
        f"| dense | 0 | | | | {probe_accuracy(base, train, test):.3f} |",
    ]
    for method in args.methods:
        for sparsity in args.sparsities:
            for ranking in GROUP_RANKINGS:
                config = PrunerConfig(method=method, group_ranking=ranking, structure="heads+mlp")
                with scoring_head(base, batches, config) as scored:  # fit_head, as in prune
                    scores = group_scores(base, scored, config, groups)
                plan = select_groups(groups, scores, "heads+mlp", sparsity, total, ranking=ranking)
                model = copy.deepcopy(base)
                apply_plan(model, plan)
                heads, units = removed_fractions(groups, plan)
                accuracy = probe_accuracy(model, train, test)
                rows.append(
                    f"| {method} | {sparsity:.0%} | {ranking} | {heads:.0%} | {units:.0%} "
                    f"| {accuracy:.3f} |"
                )
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Ranking heads against units: per kind, per layer, pooled",
            "",
            f"Command: `python benchmarks/structured_ranking.py {' '.join(argv or sys.argv[1:])}`",
            "",
            "Embedded tiny ViT, embedded digits (scoring: 4 batches of 64 training images; probe: "
            f"ridge regression on the classifier's input features, {args.train_images} training "
            f"and {args.test_images} test images), structure `heads+mlp`, no fine-tuning.",
            "",
            *rows,
            "",
        ]
    )
    atomic_write_text(args.output, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
