"""Checkpoint size and speed of the dense and compact formats on a ViT-B/16-shaped model.

A randomly initialised ViT-B/16 (hidden 768, 12 layers, 12 heads, MLP 3072, 224 px, 1000 labels)
is pruned by global magnitude (the default prunable set: the encoder's Linear weights) at each
sparsity, then saved in both formats and loaded back with
`AutoModelForImageClassification.from_pretrained`. Prints a markdown table:

- dense: `model.safetensors` (the masks sidecar is listed apart), compact: `model.compact.safetensors`;
- bound: the information bound, i.e. the bytes of every stored value (kept weights plus unpruned
  tensors) plus `n * H(p) / 8` bytes for the masks of the `n` prunable weights at density `p`;
- save / load: wall-clock seconds (best of `--repeats`). Loading a dense safetensors checkpoint
  memory-maps the file (weights are read on first use); loading a compact one decodes every tensor.

Targets: compact <= 15% of dense at 90% sparsity, compact <= 1.10 x the bound.

    python benchmarks/checkpoint_size.py [--sparsities 0.9 0.95 0.98] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification
from transformers.utils import logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_afr import AFRPruner, PrunerConfig  # noqa: E402
from hf_afr.checkpoint.compact import information_bound, read_compact_header  # noqa: E402
from hf_afr.checkpoint.formats import COMPACT_WEIGHTS_NAME, MASKS_NAME  # noqa: E402
from hf_afr.inference.timing import seconds_per_call  # noqa: E402


def vit_b16() -> ViTForImageClassification:
    config = ViTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        num_labels=1000,
    )
    torch.manual_seed(0)
    return ViTForImageClassification(config).eval()


def best_time(fn, repeats: int) -> float:
    return min(seconds_per_call(fn) for _ in range(repeats))


def measure(sparsity: float, repeats: int, workdir: str) -> dict:
    pruner = AFRPruner(vit_b16(), PrunerConfig(method="magnitude", sparsity=sparsity))
    pruner.prune(show_progress=False)
    dense_dir, compact_dir = (
        os.path.join(workdir, f"{f}-{sparsity}") for f in ("dense", "compact")
    )
    save = {
        "dense": best_time(lambda: pruner.save_pretrained(dense_dir, model_card=False), repeats),
        "compact": best_time(
            lambda: pruner.save_pretrained(compact_dir, "compact", model_card=False), repeats
        ),
    }
    load = {
        name: best_time(
            lambda d=folder: AutoModelForImageClassification.from_pretrained(d), repeats
        )
        for name, folder in (("dense", dense_dir), ("compact", compact_dir))
    }
    entries = read_compact_header(os.path.join(compact_dir, COMPACT_WEIGHTS_NAME))
    pruned = {e.param for e in entries.values()}
    unpruned_bytes = sum(
        t.numel() * t.element_size()
        for k, t in pruner.model.state_dict().items()
        if k not in pruned
    )
    return {
        "sparsity": pruner.sparsity_report().sparsity,
        "dense": os.path.getsize(os.path.join(dense_dir, "model.safetensors")),
        "masks": os.path.getsize(os.path.join(dense_dir, MASKS_NAME)),
        "compact": os.path.getsize(os.path.join(compact_dir, COMPACT_WEIGHTS_NAME)),
        "bound": information_bound(entries, unpruned_bytes),
        "save": save,
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    mb = 1e6
    print(
        f"ViT-B/16 shape, random weights, global magnitude pruning of the encoder Linear weights; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads.\n"
    )
    print(
        "| sparsity | dense MB | masks sidecar MB | compact MB | compact/dense | bound MB "
        "| compact/bound | save dense s | save compact s | load dense s | load compact s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failures = []
    with tempfile.TemporaryDirectory() as workdir:
        for sparsity in args.sparsities:
            r = measure(sparsity, args.repeats, workdir)
            ratio, over = r["compact"] / r["dense"], r["compact"] / r["bound"]
            print(
                f"| {r['sparsity']:.0%} | {r['dense'] / mb:.1f} | {r['masks'] / mb:.1f} "
                f"| {r['compact'] / mb:.1f} | {ratio:.1%} | {r['bound'] / mb:.1f} | {over:.3f} "
                f"| {r['save']['dense']:.2f} | {r['save']['compact']:.2f} "
                f"| {r['load']['dense']:.2f} | {r['load']['compact']:.2f} |",
                flush=True,
            )
            if over > 1.10:
                failures.append(f"{sparsity:.0%}: compact is {over:.3f}x the bound (target 1.10)")
            if abs(sparsity - 0.9) < 1e-9 and ratio > 0.15:
                failures.append(f"90%: compact is {ratio:.1%} of dense (target 15%)")
    print(
        "\nDense loading memory-maps the file (weights are read on first use); compact loading "
        "decodes every tensor."
    )
    print("Targets met." if not failures else "Targets missed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
