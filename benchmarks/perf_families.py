"""Scoring cost across families: AFR/SNIP and ReFer/SNIP of DeiT-B/16 and Swin-T against ViT-B/16.

The family-specific parts of scoring (DeiT's extra token, Swin's per-stage hidden states of
different widths and its patch-merging layers, the families' feature reductions) must not
make the criteria relatively dearer than on a ViT: target, each family's ratio within 5% of
ViT's (`ratio_family <= 1.05 * ratio_vit`).

Every variant (3 models x SNIP, ReFer, AFR) runs in the same interleaved rounds, the order
rotating each round, so machine load hits all of them alike; a ratio is the median of its
per-round ratios, and "vs ViT" the family's ratio over ViT's. Random weights, float32 (timing
does not depend on the weights). DeiT differs from ViT by one token only: the gap between
their ratios shows the noise of the run.

    python benchmarks/perf_families.py           # B/16 and Swin-T, batch 4: ~1.5 min on 2 quiet cores
    python benchmarks/perf_families.py --quick   # small shapes of the same families: ~45 s
    python benchmarks/perf_families.py --threads 1 --clock cpu   # on a busy shared machine

Prints a markdown table (and writes the raw times with `--json PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers

from hf_afr import PrunerConfig, find_prunable_parameters, get_criterion

METHODS = ("snip", "refer", "afr")
NUM_LABELS = 10
TARGET = 1.05  # family ratio / ViT ratio

_B16 = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12)
_B16 |= dict(num_attention_heads=12, intermediate_size=3072)
_S = dict(image_size=112, patch_size=16, hidden_size=192, num_hidden_layers=4)
_S |= dict(num_attention_heads=3, intermediate_size=768)
SHAPES = {  # name: (config class, kwargs)
    "full": {
        "ViT-B/16": ("ViTConfig", _B16),
        "DeiT-B/16 (distilled)": ("DeiTConfig", _B16),
        "Swin-T": (
            "SwinConfig",
            dict(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2])
            | dict(num_heads=[3, 6, 12, 24], window_size=7),
        ),
    },
    "quick": {
        "ViT, 4 layers, 192 wide": ("ViTConfig", _S),
        "DeiT, 4 layers, 192 wide": ("DeiTConfig", _S),
        "Swin, 3 stages, 48 wide": (
            "SwinConfig",
            dict(image_size=112, patch_size=4, embed_dim=48, depths=[2, 2, 2])
            | dict(num_heads=[2, 4, 8], window_size=7),
        ),
    },
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# Copied from benchmarks/perf.py (`interleaved`, `ratio`) until both share one module; the
# clock is a choice here (CPU time resists the load of a shared machine).
def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Per-variant times of `rounds` rounds; the order rotates each round. One warm-up call."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    per_round = [a / b for a, b in zip(times[num], times[den])]
    return {
        "median": statistics.median(per_round),
        "low": min(per_round),
        "high": max(per_round),
        "of_minimums": min(times[num]) / min(times[den]),
    }


def build(config_class: str, kwargs: dict, seed: int = 0):
    """A random-weight classifier of the family (`*ForImageClassification`), in eval mode."""
    from hf_afr.architectures import get_architecture

    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(num_labels=NUM_LABELS, **kwargs)
    return get_architecture(config).model_cls(config).eval()


def scorer(model, batch: dict, method: str) -> Callable[[], Any]:
    """A zero-argument callable running the registered criterion on one batch."""
    config = PrunerConfig(method=method, num_batches=1)
    params = find_prunable_parameters(model, config)
    criterion = get_criterion(method)
    return lambda: criterion.score(model, [batch], params, config)


def run(size: str, batch_size: int, rounds: int, clock: str = "wall") -> dict:
    fns, models = {}, {}
    for name, (config_class, kwargs) in SHAPES[size].items():
        model = build(config_class, kwargs)
        generator = torch.Generator().manual_seed(1)
        n = model.config.image_size
        batch = {
            "pixel_values": torch.randn(batch_size, 3, n, n, generator=generator),
            "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator),
        }
        models[name] = model
        for method in METHODS:
            fns[f"{name} | {method}"] = scorer(model, batch, method)
    times = interleaved(fns, rounds, CLOCKS[clock])
    rows = []
    for name, model in models.items():
        row = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
        for method in ("refer", "afr"):
            row[f"{method}/snip"] = ratio(times, f"{name} | {method}", f"{name} | snip")
            reference = rows[0][f"{method}/snip"] if rows else row[f"{method}/snip"]
            row[f"{method}/snip vs vit"] = row[f"{method}/snip"]["median"] / reference["median"]
        row["snip_s"] = statistics.median(times[f"{name} | snip"])
        rows.append(row)
    return {
        "size": size,
        "batch_size": batch_size,
        "rounds": rounds,
        "clock": clock,
        "rows": rows,
        "times": times,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Scoring time by family ({result['clock']} clock), batch {result['batch_size']} x 1, "
        f"{result['rounds']} interleaved rounds (target: each ratio <= {TARGET:.2f} x ViT's)",
        "",
        "| model | params | SNIP | ReFer/SNIP | vs ViT | AFR/SNIP | vs ViT | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        worst = max(row["refer/snip vs vit"], row["afr/snip vs vit"])
        verdict = (
            "reference"
            if row is result["rows"][0]
            else ("met" if worst <= TARGET else f"missed ({worst:.3f} > {TARGET})")
        )
        lines.append(
            f"| {row['model']} | {row['params_m']:.1f} M | {row['snip_s'] * 1000:.0f} ms "
            f"| {row['refer/snip']['median']:.2f} | {row['refer/snip vs vit'] - 1:+.1%} "
            f"| {row['afr/snip']['median']:.2f} | {row['afr/snip vs vit'] - 1:+.1%} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few rounds")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--rounds", type=int, help="default: 11 (full), 15 (quick)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="'wall' (as perf.py) or 'cpu' (process CPU time: with --threads 1, robust to the "
        "load of a shared machine)",
    )
    parser.add_argument("--json", help="also write the raw times and ratios to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (15 if args.quick else 11)
    started = time.perf_counter()
    result = run("quick" if args.quick else "full", args.batch_size, rounds, args.clock)
    result["seconds"] = time.perf_counter() - started
    result["threads"] = torch.get_num_threads()
    result["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(markdown(result))
    print(
        f"({result['seconds']:.0f} s, {result['threads']} threads, load {result['load_average']})"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
