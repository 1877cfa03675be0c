"""Torch-Pruning side by side with hf_afr's structured pruning, on transformers 5 ViTs.

Torch-Pruning (`pip install torch-pruning`; not an hf_afr dependency) ships a Hugging Face ViT
recipe, `examples/transformers/prune_hf_vit.py`. This script:

1. imports what the recipe imports (`ViTSelfAttention`, `ViTSelfOutput`) and prints the error
   of transformers 5 (whose ViT attention is one `ViTAttention` with `q_proj`...`o_proj`);
2. runs the recipe's pruning calls with only those names ported (`q_proj/k_proj/v_proj` grouped
   by head; `num_attention_heads`, `head_dim` set after pruning) on a ViT-B/16-shaped model with
   random weights at 50%: the recipe as published (`l1`, uniform: every channel group, hidden
   size included, loses 50%) and the configuration of hf_afr's `structure="heads+mlp"` (whole
   heads and MLP units, hidden size kept) with group-L2 magnitude and Taylor importance; next
   to hf_afr's structured `afr` and `magnitude`: weights, parameters and MACs (all counted by
   Torch-Pruning), speed-up over dense (side by side), whether the model computes exactly what
   the dense one does with the removed heads and units zeroed, and whether
   `save_pretrained` -> `from_pretrained` reloads it;
3. (`--accuracy`) fine-tunes the Torch-Pruning heads+mlp variants of the embedded tiny ViT on
   digits with the recipe, heads and seeds of `benchmarks/structured_grid.py`, next to the
   grid's own runs of the same cells.

    python benchmarks/torch_pruning_peer.py                 # steps 1-2 (minutes)
    python benchmarks/torch_pruning_peer.py --accuracy --skip_size --variants tp-l2 tp-taylor
    python benchmarks/torch_pruning_peer.py --recipe_error  # step 1 only: the import error

Writes `torch_pruning_peer.{json,md}` to `--output_dir` (default `benchmarks/results/`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_grid  # noqa: E402

VARIANTS = ("tp-recipe-l1", "tp-l2", "tp-taylor", "hf_afr-afr", "hf_afr-magnitude")


def recipe_import_error() -> str | None:
    """The error of the recipe's transformers import, None if it imports."""
    try:
        from transformers.models.vit.modeling_vit import ViTSelfAttention, ViTSelfOutput  # noqa
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _attention_modules(model):
    from transformers.models.vit.modeling_vit import ViTAttention

    return [m for m in model.modules() if isinstance(m, ViTAttention)]


def torch_pruning(model, batches, variant: str, ratio: float):
    """The recipe's calls, with transformers 5 names; `model` is pruned in place."""
    import torch_pruning as tp

    example = batches[0]["pixel_values"][:1]
    importance = {
        "tp-recipe-l1": tp.importance.MagnitudeImportance(p=1),
        "tp-l2": tp.importance.GroupMagnitudeImportance(p=2),
        "tp-taylor": tp.importance.TaylorImportance(),
    }[variant]
    num_heads, ignored = {}, [model.classifier]
    for attention in _attention_modules(model):
        for layer in (attention.q_proj, attention.k_proj, attention.v_proj):
            num_heads[layer] = attention.num_attention_heads
        if variant != "tp-recipe-l1":  # keep the hidden size: heads and MLP units only
            ignored.append(attention.o_proj)
    if variant != "tp-recipe-l1":
        ignored += [m for n, m in model.named_modules() if n.endswith("mlp.fc2")]
    recipe = variant == "tp-recipe-l1"
    pruner = tp.pruner.BasePruner(
        model,
        example,
        global_pruning=False,
        importance=importance,
        pruning_ratio=ratio,
        ignored_layers=ignored,
        output_transform=lambda out: out.logits.sum(),
        num_heads=num_heads,
        prune_head_dims=recipe,
        prune_num_heads=not recipe,
        head_pruning_ratio=ratio,
    )
    if variant == "tp-taylor":
        model.zero_grad()
        for batch in batches:
            logits = model(pixel_values=batch["pixel_values"]).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    for group in pruner.step(interactive=True):
        group.prune()
    for attention in _attention_modules(model):  # the recipe's "modify the head size" loop
        attention.num_attention_heads = pruner.num_heads[attention.q_proj]
        attention.head_dim = attention.q_proj.out_features // attention.num_attention_heads
    model.zero_grad(set_to_none=True)
    return model


def hf_afr_structured(model, batches, method: str, sparsity: float):
    from hf_afr import AFRPruner, PrunerConfig

    config = PrunerConfig(
        method=method, sparsity=sparsity, num_batches=len(batches), structure="heads+mlp"
    )
    pruner = AFRPruner(model, config)
    pruner.prune(batches, show_progress=False)
    return pruner.model


def prune_variant(dense, batches, variant: str, ratio: float):
    model = copy.deepcopy(dense)
    if variant.startswith("tp-"):
        return torch_pruning(model, batches, variant, ratio)
    return hf_afr_structured(model, batches, variant.removeprefix("hf_afr-"), ratio)


def _locate(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor | None:
    """Boolean over the rows of `big`: those equal to a row of `small`; None if a row of
    `small` is none of them."""
    index = {row.tobytes(): i for i, row in enumerate(big.numpy())}
    found = [index.get(row.tobytes()) for row in small.numpy()]
    if None in found:
        return None
    keep = torch.zeros(big.shape[0], dtype=torch.bool)
    keep[found] = True
    return keep


@torch.no_grad()
def exact_removal(dense, pruned, pixel_values) -> str:
    """Whether `pruned` computes what `dense` computes with the heads and MLP units it lacks
    zeroed: each kept q/k/v/fc1 row and o_proj/fc2 column is located in the dense weights and
    everything else is zeroed in a dense copy."""
    if pruned.vit.embeddings.cls_token.shape != dense.vit.embeddings.cls_token.shape:
        return "hidden size pruned too: not a removal of heads and units"
    masked = copy.deepcopy(dense).eval()
    for (name, small), big in zip(pruned.named_modules(), masked.modules()):
        if not isinstance(small, torch.nn.Linear) or small.weight.shape == big.weight.shape:
            continue
        rows = small.out_features != big.out_features
        keep = _locate(
            *((small.weight, big.weight) if rows else (small.weight.t(), big.weight.t()))
        )
        if keep is None:
            return f"{name}: a kept row or column is not one of the dense model's"
        if rows:
            big.weight[~keep] = 0
            if big.bias is not None:
                big.bias[~keep] = 0
        else:
            big.weight[:, ~keep] = 0
    expected = masked(pixel_values=pixel_values).logits
    actual = pruned.eval()(pixel_values=pixel_values).logits
    error = float((actual - expected).abs().max() / expected.abs().max())
    verdict = "exact" if error < 1e-4 else "differs"
    return f"{verdict} (max relative difference {error:.1e})"


def reload_status(model) -> str:
    """`save_pretrained` then `from_pretrained` of the same class: "reloads" or the error."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model.save_pretrained(tmp)
            type(model).from_pretrained(tmp)
        except Exception as error:  # the peer's failure is the measurement
            message = str(error).splitlines()[0][:160]
            if "ignore_mismatched_sizes" in message:  # the config still has the dense widths
                message = "weight shapes differ from those the saved config describes"
            return f"{type(error).__name__}: {message}"
    return "reloads"


def size_and_speed(args) -> dict:
    """Step 2 on a ViT-B/16-shaped model with random weights."""
    import torch_pruning as tp
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    dense = ViTForImageClassification(ViTConfig(num_labels=10)).eval()
    generator = torch.Generator().manual_seed(1)
    batches = [
        {
            "pixel_values": torch.randn(args.scoring_batch_size, 3, 224, 224, generator=generator),
            "labels": torch.randint(0, 10, (args.scoring_batch_size,), generator=generator),
        }
        for _ in range(args.num_batches)
    ]
    example = batches[0]["pixel_values"][:1]
    dense_macs, dense_params = tp.utils.count_ops_and_params(dense, example)
    dense_linear = structured_grid.encoder_linear_weights(dense)
    models, rows = {"dense": dense}, {}
    for variant in args.variants:
        start = time.perf_counter()
        try:
            model = prune_variant(dense, batches, variant, args.ratio)
        except Exception as error:  # the peer's failure is the measurement
            rows[variant] = {"error": f"{type(error).__name__}: {error}"}
            continue
        seconds = time.perf_counter() - start
        macs, params = tp.utils.count_ops_and_params(model, example)
        rows[variant] = {
            "pruning_seconds": seconds,
            "linear_weights_kept": structured_grid.encoder_linear_weights(model) / dense_linear,
            "params_kept": params / dense_params,
            "macs_kept": macs / dense_macs,
            "params_M": params / 1e6,
            "gmacs": macs / 1e9,
            "heads": [a.num_attention_heads for a in _attention_modules(model)],
            "hidden_size": model.vit.embeddings.cls_token.shape[-1],
            "exact": exact_removal(dense, model, example),
            "reload": reload_status(model),
        }
        models[variant] = model
    x = torch.randn(args.latency_batch, 3, 224, 224, generator=generator)
    speed = structured_grid.speedups(models, x, args.latency_rounds)
    for variant in rows:
        if variant in speed:
            rows[variant]["speedup"] = speed[variant]
    return {
        "dense": {
            "params_M": dense_params / 1e6,
            "gmacs": dense_macs / 1e9,
            "seconds": speed["dense_seconds"],
        },
        "variants": rows,
    }


def accuracy_runs(args) -> list[dict]:
    """Step 3: each heads+mlp variant of the embedded tiny ViT, fine-tuned on digits."""
    import replicate

    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        for variant in [v for v in args.variants if v != "tp-recipe-l1"]:
            job = {
                "model": args.model, "task": "digits", "seed": seed, "train_limit": None,
                "num_batches": 4, "scoring_batch_size": 32,  # the structured grid's
            }  # fmt: skip
            data = structured_grid.task_data("digits", None)
            batches = replicate.scoring_batches(data, job)
            dense = structured_grid._load(job, "random", 0.5).model  # the seed's new head
            start = time.perf_counter()
            model = prune_variant(dense, batches, variant, args.ratio)
            kept = structured_grid.encoder_linear_weights(
                model
            ) / structured_grid.encoder_linear_weights(dense)
            replicate.fine_tune(model, data, seed, args.epochs, 64, 1e-3, None)
            runs.append(
                {"variant": variant, "seed": seed, "linear_weights_kept": kept,
                 "accuracy": replicate.accuracy(model, data),
                 "seconds": time.perf_counter() - start}
            )  # fmt: skip
            print(f"digits seed {seed} {variant}: {100 * runs[-1]['accuracy']:.1f}%", flush=True)
    return runs + grid_runs(args)


def grid_runs(args) -> list[dict]:
    """The structured grid's digits runs of the same seeds, sparsity and recipe (the same head,
    scoring batches and fine-tuning as `accuracy_runs`), where it has them."""
    done, _ = structured_grid.finished_runs(Path(args.output_dir))
    return [
        {"variant": f"hf_afr-{r['method']} (grid)", "seed": r["seed"], "accuracy": r["accuracy"],
         "linear_weights_kept": r["linear_weights_kept"]}
        for r in done
        if r["task"] == "digits" and r["sparsity"] == args.ratio and r["seed"] in args.seeds
        and r["epochs"] == args.epochs and r["method"] in ("afr", "magnitude", "snip")
    ]  # fmt: skip


def tables(result: dict) -> str:
    import statistics

    lines = [
        "### Torch-Pruning side by side (`python benchmarks/torch_pruning_peer.py"
        + (" --accuracy" if result.get("accuracy") else "")
        + "`)",
        "",
        f"torch-pruning {result['versions']['torch_pruning']}, transformers "
        f"{result['versions']['transformers']}, torch {result['versions']['torch']}.",
        "",
        f"Recipe as published (`examples/transformers/prune_hf_vit.py`): "
        f"`{result['recipe_import_error'] or 'imports'}`.",
        "",
    ]
    size = result.get("size")
    if size:
        d = size["dense"]
        lines += [
            f"ViT-B/16 shape, random weights, 50%: dense {d['params_M']:.1f} M parameters, "
            f"{d['gmacs']:.1f} GMACs per image, {1000 * d['seconds']:.0f} ms per batch of "
            f"{result['args']['latency_batch']} (1 thread).",
            "",
            "| variant | heads per layer | hidden | encoder Linear weights kept | params kept "
            "| MACs kept | speed-up | same as dense minus removed units | save -> from_pretrained |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for variant, row in size["variants"].items():
            if "error" in row:
                lines.append(f"| {variant} | error: `{row['error']}` |||||||")
                continue
            heads = sorted(set(row["heads"]))
            lines.append(
                f"| {variant} | {'/'.join(map(str, heads))} | {row['hidden_size']} | "
                f"{row['linear_weights_kept']:.1%} | {row['params_kept']:.1%} | "
                f"{row['macs_kept']:.1%} | {row.get('speedup', float('nan')):.2f}x | "
                f"{row['exact']} | {row['reload']} |"
            )
        lines.append("")
    runs = result.get("accuracy")
    if runs:
        lines += [
            f"Digits, embedded tiny ViT, 50%, fine-tuned {result['args']['epochs']} epochs "
            "(the structured grid's recipe), seeds " + str(sorted({r["seed"] for r in runs})) + ":",
            "",
            "| variant | accuracy % (mean ± std) | per seed | encoder Linear weights kept |",
            "|---|---:|---|---:|",
        ]
        for variant in dict.fromkeys(r["variant"] for r in runs):
            acc = [100 * r["accuracy"] for r in runs if r["variant"] == variant]
            kept = [r["linear_weights_kept"] for r in runs if r["variant"] == variant]
            lines.append(
                f"| {variant} | {statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} | "
                f"{', '.join(f'{a:.1f}' for a in acc)} | {statistics.mean(kept):.1%} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from importlib import metadata

    import transformers

    from hf_afr import DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe_error", action="store_true", help="only print the import error")
    p.add_argument("--accuracy", action="store_true", help="also fine-tune on digits")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction removed")
    p.add_argument("--num_batches", type=int, default=2, help="scoring batches")
    p.add_argument("--scoring_batch_size", type=int, default=8, help="ViT-B scoring images")
    p.add_argument("--latency_batch", type=int, default=8)
    p.add_argument("--latency_rounds", type=int, default=3)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model of the accuracy runs")
    p.add_argument("--skip_size", action="store_true", help="skip the ViT-B/16 step")
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    error = recipe_import_error()
    print(
        f"torch-pruning {metadata.version('torch-pruning')}, transformers {transformers.__version__}"
    )
    print(f"prune_hf_vit.py's import: {error or 'imports'}")
    if args.recipe_error:
        return {"recipe_import_error": error}
    torch.set_num_threads(1)
    result = {
        "args": vars(args),
        "versions": {
            "torch_pruning": metadata.version("torch-pruning"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "recipe_import_error": error,
    }
    out = Path(args.output_dir)
    earlier = out / "torch_pruning_peer.json"
    if not args.skip_size:
        result["size"] = size_and_speed(args)
    elif earlier.exists():  # keep the size step of an earlier invocation
        result["size"] = json.loads(earlier.read_text()).get("size")
    if args.accuracy:
        result["accuracy"] = accuracy_runs(args)
    from hf_afr.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "torch_pruning_peer.json", json.dumps(result, indent=1, default=float))
    text = tables(result)
    atomic_write_text(out / "torch_pruning_peer.md", text)
    print(text)
    return result


if __name__ == "__main__":
    main()
