"""Section 6: dense vs compact checkpoints, from `benchmarks/checkpoint_size.py`.

Calls that script's public `measure(sparsity, repeats, workdir)` rather than duplicating it,
so the model is its ViT-B/16 shape at every preset. A missing or failing script fails the
section (and the run): there is no silent "not measured".
"""

from __future__ import annotations

import dataclasses
import importlib
import tempfile

from .common import TARGETS, Runtime, require_finite, verdict

MB = 1e6


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    sparsities: tuple[float, ...]
    repeats: int = 1


PRESETS = {
    "full": CheckpointSettings((0.9, 0.95, 0.98)),
    "quick": CheckpointSettings((0.9,)),
    "toy": CheckpointSettings((0.9,)),
}


def run(settings: CheckpointSettings, rt: Runtime) -> dict:
    checkpoint_size = importlib.import_module("checkpoint_size")  # benchmarks/checkpoint_size.py
    with tempfile.TemporaryDirectory() as workdir:
        rows = [checkpoint_size.measure(s, settings.repeats, workdir) for s in settings.sparsities]
    for r in rows:
        sizes = [r["dense"], r["compact"], r["bound"]]
        times = [*r["save"].values(), *r["load"].values()]
        require_finite(sizes + times, f"checkpoint sizes at sparsity {r['sparsity']:.2f}")
        if not min(sizes) > 0:
            raise RuntimeError(f"Checkpoint sizes must be positive; got {r}.")
    return {"shape": "ViT-B/16", "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"{result['shape']}-shaped, random weights, global magnitude pruning, "
        "from `benchmarks/checkpoint_size.py` (`measure`).\n",
        "| sparsity | dense MB | compact MB | compact/dense | bound MB | compact/bound "
        "| target <= 1.10 | save dense s | save compact s | load dense s | load compact s "
        "| load compact/dense |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        over = r["compact"] / r["bound"]
        lines.append(
            f"| {r['sparsity']:.0%} | {r['dense'] / MB:.1f} | {r['compact'] / MB:.1f} "
            f"| {r['compact'] / r['dense']:.1%} | {r['bound'] / MB:.1f} | {over:.3f} "
            f"| {verdict(over, TARGETS['compact/bound']).split(' (')[0]} "
            f"| {r['save']['dense']:.2f} | {r['save']['compact']:.2f} "
            f"| {r['load']['dense']:.2f} | {r['load']['compact']:.2f} "
            f"| {r['load']['compact'] / r['load']['dense']:.2f} |"
        )
    return "\n".join(lines) + "\n"
