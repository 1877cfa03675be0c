"""`hf-afr bench MODEL_DIR --batch-size 1 8`: a pruned checkpoint, dense vs converted.

For each batch size the checkpoint is loaded three times: as saved (dense), shrunk (`shrink`)
and converted (`to_sparse_inference`: shrunk, then each Linear on its fastest kernel for that
batch). The three run side by side, interleaved round by round; the tables give per layer the
kernel chosen and its measured speed-up, end to end the median of the per-round ratios, the
output difference and the resident bytes, and what shrinking removed per block.

`hf_afr.cli` defines the arguments and calls `run_bench(args)`; heavy imports happen here.
"""

from __future__ import annotations

import argparse
import json
import os

from ..checkpoint.formats import PRUNER_CONFIG_NAME
from ..files import atomic_write_text


def _load(args: argparse.Namespace):
    import torch

    from ..checkpoint.load import load_classifier

    kwargs = {"revision": args.revision} if args.revision else {}
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    return load_classifier(args.model, model_kwargs=kwargs).to(args.device).eval()


def _timed(model, inputs):
    import torch

    def call():
        with torch.inference_mode():
            model(**inputs)

    return call


def bench_config(args: argparse.Namespace):
    """The `SparseInferenceConfig` of the command line (validated before anything is loaded)."""
    from .config import KERNELS, SparseInferenceConfig

    return SparseInferenceConfig(
        shrink=not args.no_shrink,
        kernels=tuple(args.kernels or KERNELS),
        timing_rounds=args.layer_rounds,
    )


def bench_batch(args: argparse.Namespace, batch_size: int) -> dict:
    """Load, convert and time one batch size; returns the numbers of the tables."""
    import torch

    from .convert import default_example_inputs, run_model, to_sparse_inference
    from .kernels import module_bytes
    from .shrink import shrink
    from .timing import time_side_by_side

    models = {"dense": _load(args)}
    inputs = default_example_inputs(models["dense"], batch_size)
    dtype = next(models["dense"].parameters()).dtype
    inputs = {k: v.to(args.device, dtype) for k, v in inputs.items()}
    shrink_report = None
    if not args.no_shrink:
        models["shrunk"] = _load(args)
        shrink_report = shrink(models["shrunk"])
    models["converted"] = _load(args)
    report = to_sparse_inference(models["converted"], bench_config(args), example_inputs=inputs)
    expected = run_model(models["dense"], inputs)
    variants = {name: _timed(model, inputs) for name, model in models.items()}
    timings = time_side_by_side(variants, "dense", args.rounds, 0.05, torch.device(args.device))
    result = {"batch_size": batch_size, "report": report, "shrink": shrink_report, "variants": {}}
    for name, model in models.items():
        out = run_model(model, inputs)
        result["variants"][name] = {
            "ms": 1e3 * timings[name].seconds,
            "speedup": timings[name].speedup,
            "range": timings[name].speedup_range,
            "max_abs_diff": float((out.double() - expected.double()).abs().max()),
            "top1_equal": bool((out.argmax(-1) == expected.argmax(-1)).all()),
            "bytes": module_bytes(model),
        }
    return result


def format_tables(model: str, results: list[dict]) -> str:
    """The end-to-end table, the per-layer table (one kernel column per batch) and the shrink table."""
    lines = [
        f"# hf-afr bench {model}",
        "",
        "| batch | variant | ms / batch | speed-up vs dense (range) | max abs logit diff | "
        "top-1 equal | resident bytes |",
        "|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        for name, v in r["variants"].items():
            lines.append(
                f"| {r['batch_size']} | {name} | {v['ms']:.2f} | **{v['speedup']:.2f}x** "
                f"({v['range'][0]:.2f}-{v['range'][1]:.2f}) | {v['max_abs_diff']:.1e} | "
                f"{'yes' if v['top1_equal'] else 'NO'} | {v['bytes']:,} |"
            )
    header = "| layer | shape | sparsity | " + " | ".join(
        f"batch {r['batch_size']}: kernel (speed-up)" for r in results
    )
    lines += ["", header + " |", "|---|---|---:|" + "---|" * len(results)]
    for i, layer in enumerate(results[0]["report"].layers):
        cells = []
        for r in results:
            c = r["report"].layers[i]
            timed = {**c.candidates}
            best = f" ({timed[c.kernel]:.2f}x)" if c.kernel in timed else ""
            tried = ", ".join(f"{k} {v:.2f}x" for k, v in timed.items() if k != c.kernel)
            cells.append(f"{c.kernel}{best}" + (f"; {tried}" if tried else ""))
        lines.append(
            f"| {layer.name} | {layer.shape[0]}x{layer.shape[1]} | {layer.sparsity:.1%} | "
            + " | ".join(cells)
            + " |"
        )
    if results[0]["shrink"] is not None:
        lines += ["", "Shrinking (exact):", "", results[0]["shrink"].to_markdown()]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """Run `hf-afr bench`; prints the tables and returns the exit status."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if any(b < 1 for b in args.batch_size) or args.rounds < 1 or args.layer_rounds < 1:
        raise ValueError("--batch-size, --rounds and --layer-rounds must be positive integers.")
    if args.dtype not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype must be float32, float16 or bfloat16, got {args.dtype!r}.")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA device is available here.")
    bench_config(args)
    if os.path.isdir(args.model) and not os.path.isfile(
        os.path.join(args.model, PRUNER_CONFIG_NAME)
    ):
        print(
            f"Note: {args.model} was not pruned by hf_afr (no {PRUNER_CONFIG_NAME}): every model "
            "below is the same dense model; prune it first (scripts/prune.py) to see a speed-up."
        )
    results = [bench_batch(args, b) for b in args.batch_size]
    text = format_tables(args.model, results)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
        data = [
            {**{k: v for k, v in r.items() if k not in ("report", "shrink")},
             "layers": r["report"].to_dict()["layers"],
             "shrink": None if r["shrink"] is None else r["shrink"].to_dict()}
            for r in results
        ]  # fmt: skip
        path = args.output.rsplit(".", 1)[0] + ".json"
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return 0
