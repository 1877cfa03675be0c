"""Speed of structurally pruned models: dense vs `heads+mlp` at 50% and 75%, side by side.

ViT-B/16 shape (224 px, hidden 768, 12 blocks of 12 heads and 3072 MLP units), random weights,
no download. The pruned models come from `AFRPruner(model, PrunerConfig(structure="heads+mlp",
sparsity=s, method="magnitude", round_to=8)).prune()` (speed depends only on the widths, so a
data-free criterion serves), and run with the same dense kernels as the dense model.

1. Inference (`torch.inference_mode`), batch 8 and 64: seconds per batch, speed-up over dense
   (median of per-round ratios, the variants interleaved round by round, and its range).
2. Fine-tuning step (forward, backward, AdamW step; training mode), dense vs 50%.

    python benchmarks/structured_speed.py                 # ViT-B/16, CPU
    python benchmarks/structured_speed.py --quick         # small shapes (seconds)
    python benchmarks/structured_speed.py --device cuda --batch_sizes 64 256

Prints a markdown table and writes it to `--output` (default
`benchmarks/results/structured_speed.md`). Ratios, not absolute times, are the result on a
shared machine: within one round every variant runs once.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging

from hf_afr import AFRPruner, PrunerConfig, count_macs
from hf_afr.architectures import get_architecture
from hf_afr.files import atomic_write_text
from hf_afr.inference.timing import time_side_by_side
from hf_afr.structure import layer_widths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit_shapes import SHAPES  # noqa: E402

TARGETS = {0.5: 1.8, 0.75: 3.0}  # inference speed-up targets; fine-tuning step at 50%: 1.7
STEP_TARGET = 1.7


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, one round (for tests)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 64])
    p.add_argument("--train_batch_size", type=int, default=8)
    p.add_argument("--no_training", action="store_true", help="inference rows only")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--output", default="benchmarks/results/structured_speed.md")
    args = p.parse_args(argv)
    if args.rounds < 1 or min(args.batch_sizes) < 1 or args.train_batch_size < 1:
        p.error("--rounds, --batch_sizes and --train_batch_size must be at least 1")
    if not all(0 < s < 1 for s in args.sparsities):
        p.error("--sparsities must lie in (0, 1)")
    return args


def build_models(args) -> dict[str, torch.nn.Module]:
    """The dense model and one structurally pruned copy per sparsity, on the device."""
    torch.manual_seed(0)
    config = ViTConfig(**SHAPES["quick" if args.quick else "full"], num_labels=1000)
    dense = ViTForImageClassification(config).eval()
    models = {"dense": dense}
    for sparsity in args.sparsities:
        model = copy.deepcopy(dense)
        options = dict(method="magnitude", structure="heads+mlp", sparsity=sparsity, round_to=8)
        AFRPruner(model, PrunerConfig(**options)).prune(show_progress=False)
        models[f"heads+mlp {sparsity:.0%}"] = model
    dtype = getattr(torch, args.dtype)
    return {name: m.to(device=args.device, dtype=dtype) for name, m in models.items()}


def describe(model: torch.nn.Module) -> dict:
    """Parameters, multiply-adds per image, and the range of widths over the blocks."""
    heads, units = layer_widths(model, get_architecture(model).layout)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model),
        "heads": f"{min(heads)}-{max(heads)}" if min(heads) != max(heads) else str(heads[0]),
        "units": f"{min(units)}-{max(units)}" if min(units) != max(units) else str(units[0]),
    }


def inference_rows(models, args, image_size: int) -> list[dict]:
    rows = []
    dtype = getattr(torch, args.dtype)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, image_size, image_size, device=args.device, dtype=dtype)

        def call(model, x=x):
            def run():
                with torch.inference_mode():
                    model(pixel_values=x)

            return run

        timings = time_side_by_side(
            {name: call(m) for name, m in models.items()},
            "dense",
            rounds=args.rounds,
            min_time=0.05,
            device=torch.device(args.device),
            warmup=args.quick,  # a full-size call is long: its timed warm-up call suffices
        )
        for name, t in timings.items():
            rows.append({"what": "inference", "variant": name, "batch": batch, "timing": t})
        print(
            f"inference batch {batch}: "
            + ", ".join(f"{n} {t.speedup:.2f}x" for n, t in timings.items())
        )
    return rows


def training_rows(models, args, image_size: int) -> list[dict]:
    """One fine-tuning step (forward, backward, AdamW) of dense and of the 50% model."""
    names = ["dense"] + [n for n in models if n.endswith(" 50%")]
    dtype = getattr(torch, args.dtype)
    batch = args.train_batch_size
    x = torch.randn(batch, 3, image_size, image_size, device=args.device, dtype=dtype)
    labels = torch.randint(0, 1000, (batch,), device=args.device)

    def step_of(model):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step():
            model(pixel_values=x, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    timings = time_side_by_side(
        {name: step_of(models[name]) for name in names},
        "dense",
        rounds=args.rounds,
        min_time=0.05,
        device=torch.device(args.device),
        warmup=True,  # the first step allocates the AdamW moments
    )
    print("fine-tuning step: " + ", ".join(f"{n} {t.speedup:.2f}x" for n, t in timings.items()))
    return [
        {"what": "fine-tuning step", "variant": n, "batch": batch, "timing": t}
        for n, t in timings.items()
    ]


def table(rows, info, args) -> str:
    lines = [
        "| measurement | model | batch | heads / block | MLP units / block | params (M) "
        "| GMACs / image | s / batch | speed-up vs dense (range) | target |",
        "|---|---|---:|---|---|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        name, t = row["variant"], row["timing"]
        d = info[name]
        sparsity = float(name.split()[-1].rstrip("%")) / 100 if name != "dense" else None
        if row["what"] == "inference":
            target = f">= {TARGETS[sparsity]}x" if sparsity in TARGETS else ""
        else:
            target = f">= {STEP_TARGET}x" if sparsity == 0.5 else ""
        speed = (
            "1 (baseline)"
            if name == "dense"
            else (f"{t.speedup:.2f}x ({t.speedup_range[0]:.2f}-{t.speedup_range[1]:.2f})")
        )
        lines.append(
            f"| {row['what']} | {name} | {row['batch']} | {d['heads']} | {d['units']} | "
            f"{d['params'] / 1e6:.1f} | {d['macs'] / 1e9:.2f} | {t.seconds:.3f} | {speed} | {target} |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.quick:
        args.rounds, args.batch_sizes, args.train_batch_size = 1, [2], 2
    logging.set_verbosity_error()
    models = build_models(args)
    info = {name: describe(m) for name, m in models.items()}
    image_size = SHAPES["quick" if args.quick else "full"]["image_size"]
    rows = inference_rows(models, args, image_size)
    if not args.no_training:
        rows += training_rows(models, args, image_size)
    device = args.device
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(device))
    else:
        device = (
            f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
        )
    shape = "small test shape" if args.quick else "ViT-B/16 shape, 224 px, random weights"
    text = "\n".join(
        [
            "# Speed of structurally pruned models (`heads+mlp`)",
            "",
            f"{shape}; {device}; {args.dtype}; torch {torch.__version__}; {args.rounds} "
            "interleaved rounds per comparison (speed-up: median of per-round ratios).",
            "",
            f"Command: `python benchmarks/structured_speed.py {' '.join(argv or sys.argv[1:])}`",
            "",
            table(rows, info, args),
            "",
        ]
    )
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, text)
    return text


if __name__ == "__main__":
    main()
