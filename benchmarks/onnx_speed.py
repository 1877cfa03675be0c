"""ONNX Runtime vs PyTorch eager, dense vs structurally pruned, side by side on the CPU.

ViT-B/16 shape (224 px, 12 blocks of 12 heads and 3072 MLP units), random weights, 1000
labels. The structured model is `AFRPruner(PrunerConfig(structure="heads+mlp", sparsity=0.5))`
of the same dense model (magnitude group scores: no data needed, the shapes are what matters
for speed). Both models are exported with `hf_afr.export.export_model_onnx` (dynamic batch) and
checked against PyTorch's logits. Four variants are then timed interleaved, round by round
(`time_side_by_side`): PyTorch dense, PyTorch structured, ORT dense, ORT structured. Target:
the ORT speed-up of structured over dense within 10% of PyTorch's, logits within 1e-4. The
speed-ups are medians of per-round ratios to PyTorch dense (the ORT ratio is the quotient of
two of them); the fastest-call ratios, least disturbed by other load, are shown beside them.

    python benchmarks/onnx_speed.py            # ViT-B/16, batch 8: a few minutes on 2 cores
    python benchmarks/onnx_speed.py --quick    # small shapes, well under a minute

Writes `onnx_speed.md` and `onnx_speed.json` to `--output_dir` (default `benchmarks/results/`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.export import check_onnx, export_model_onnx, onnx_session
from hf_afr.inference.timing import time_side_by_side

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit_shapes import SHAPES  # noqa: E402

VARIANTS = ("pytorch dense", "pytorch structured", "ort dense", "ort structured")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few rounds (for tests)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (9; quick: 3)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (torch's)")
    p.add_argument("--output_dir", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def build_models(shape: dict, sparsity: float):
    torch.manual_seed(0)
    dense = ViTForImageClassification(ViTConfig(**shape, num_labels=1000)).eval()
    config = PrunerConfig(method="magnitude", structure="heads+mlp", sparsity=sparsity)
    pruner = AFRPruner(copy.deepcopy(dense), config)
    pruner.prune(show_progress=False)
    return dense, pruner.model.eval(), pruner.sparsity_report()


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.set_verbosity_error()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    shape = SHAPES["quick" if args.quick else "full"]
    rounds = args.rounds or (3 if args.quick else 9)
    dense, small, report = build_models(shape, args.sparsity)
    x = torch.randn(args.batch_size, 3, shape["image_size"], shape["image_size"])
    feed = {"pixel_values": x.numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        sessions, exporters, diffs = {}, {}, {}
        for name, model in (("dense", dense), ("structured", small)):
            path = os.path.join(tmp, f"{name}.onnx")
            exporters[name] = export_model_onnx(model, path)
            diffs[name] = check_onnx(model, path, atol=1e-4, batch=args.batch_size)
            sessions[name] = onnx_session(path, threads)

        def eager(model):
            def run():
                with torch.no_grad():
                    return model(pixel_values=x).logits

            return run

        variants = {
            "pytorch dense": eager(dense),
            "pytorch structured": eager(small),
            "ort dense": lambda: sessions["dense"].run(None, feed),
            "ort structured": lambda: sessions["structured"].run(None, feed),
        }
        timings = time_side_by_side(variants, "pytorch dense", rounds=rounds, min_time=0.2)
    speedup = {name: timings[name].speedup for name in VARIANTS}
    best = {name: timings[name].best_speedup for name in VARIANTS}
    pytorch_ratio = speedup["pytorch structured"]
    ort_ratio = speedup["ort structured"] / speedup["ort dense"]
    # Fastest call against fastest call: the estimate least disturbed by other load.
    fastest = {
        "pytorch": best["pytorch structured"] / best["pytorch dense"],
        "ort": best["ort structured"] / best["ort dense"],
    }
    result = {
        "shape": "quick" if args.quick else "ViT-B/16",
        "batch_size": args.batch_size,
        "threads": threads,
        "rounds": rounds,
        "sparsity": args.sparsity,
        "params": {"dense": report.params_before, "structured": report.params_after},
        "macs": {"dense": report.macs_before, "structured": report.macs_after},
        "exporters": exporters,
        "max_abs_diff": diffs,
        "seconds": {name: timings[name].seconds for name in VARIANTS},
        "speedup_vs_pytorch_dense": speedup,
        "fastest_call_speedup_vs_pytorch_dense": best,
        "fastest_call_ratios": fastest,
        "pytorch_ratio": pytorch_ratio,
        "ort_ratio": ort_ratio,
        "ort_ratio_vs_pytorch_ratio": ort_ratio / pytorch_ratio,
        "target_met": abs(ort_ratio / pytorch_ratio - 1) <= 0.10 and max(diffs.values()) <= 1e-4,
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
    }
    write(result, Path(args.output_dir))
    return result


def write(result: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# ONNX Runtime vs PyTorch eager, {result['shape']}, batch {result['batch_size']}, "
        f"{result['threads']} threads",
        "",
        f"Structured: heads+mlp at {result['sparsity']:.0%} of the prunable encoder weights "
        f"({result['params']['structured']:,} of {result['params']['dense']:,} parameters, "
        f"{result['macs']['structured'] / result['macs']['dense']:.1%} of the MACs). "
        f"Median of {result['rounds']} interleaved rounds.",
        "",
        "| variant | ms per batch | speed-up vs PyTorch dense |",
        "|---|---:|---:|",
    ]
    for name in VARIANTS:
        lines.append(
            f"| {name} | {result['seconds'][name] * 1e3:.1f} | "
            f"{result['speedup_vs_pytorch_dense'][name]:.2f}x |"
        )
    lines += [
        "",
        f"Structured over dense: PyTorch {result['pytorch_ratio']:.2f}x, ONNX Runtime "
        f"{result['ort_ratio']:.2f}x (ratio of ratios {result['ort_ratio_vs_pytorch_ratio']:.3f}; "
        f"target within 10%: {'met' if result['target_met'] else 'not met'}). Fastest call "
        f"against fastest call: PyTorch {result['fastest_call_ratios']['pytorch']:.2f}x, ONNX "
        f"Runtime {result['fastest_call_ratios']['ort']:.2f}x.",
        f"ONNX Runtime logits vs PyTorch: max |diff| dense {result['max_abs_diff']['dense']:.1e}, "
        f"structured {result['max_abs_diff']['structured']:.1e} (exporters: "
        f"{result['exporters']['dense']}, {result['exporters']['structured']}).",
        "",
        f"`{result['command']}` on {result['machine']}.",
    ]
    (folder / "onnx_speed.md").write_text("\n".join(lines) + "\n")
    (folder / "onnx_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
