"""`hf-afr bench MODEL_DIR --batch-size 1 8`: a pruned checkpoint, dense vs converted.

For each batch size the checkpoint is loaded three times: as saved (dense), shrunk (`shrink`)
and converted (`to_sparse_inference`: shrunk, then each Linear on its fastest kernel for that
batch). The three run side by side, interleaved round by round; the tables give per layer the
kernel chosen and its measured speed-up, end to end the median of the per-round ratios, the
output difference and the resident bytes, and what shrinking removed per block.

`hf_afr.cli` reads the command line and calls `bench_batch` per batch size; heavy imports
happen inside the functions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SparseInferenceConfig


def load_for_bench(
    model: str, device: str = "cpu", dtype: str | None = None, revision: str | None = None
):
    """The checkpoint's classifier on `device`, in eval mode (`dtype`: e.g. `"bfloat16"`)."""
    import torch

    from ..checkpoint.load import load_classifier

    kwargs = {"revision": revision} if revision else {}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    return load_classifier(model, model_kwargs=kwargs).to(device).eval()


def bench_batch(
    model: str,
    batch_size: int,
    config: SparseInferenceConfig,
    rounds: int = 7,
    device: str = "cpu",
    dtype: str | None = None,
    revision: str | None = None,
) -> dict:
    """Load, convert and time one batch size; returns the numbers of the tables.

    Args:
        model (`str`): the pruned checkpoint, a folder or Hub id.
        batch_size (`int`): the batch to convert for and time.
        config (`SparseInferenceConfig`): the conversion (`shrink=False` skips the shrunk variant).
        rounds (`int`, defaults to 7): end-to-end timing rounds.
        device (`str`, defaults to `"cpu"`), dtype (`str`, *optional*), revision (`str`,
            *optional*): where and how the checkpoint is loaded.
    """
    import torch

    from .convert import default_example_inputs, run_model, to_sparse_inference
    from .kernels import module_bytes
    from .shrink import shrink
    from .timing import inference_call, time_side_by_side

    def load():
        return load_for_bench(model, device, dtype, revision)

    models = {"dense": load()}
    inputs = default_example_inputs(models["dense"], batch_size)
    param_dtype = next(models["dense"].parameters()).dtype
    inputs = {k: v.to(device, param_dtype) for k, v in inputs.items()}
    shrink_report = None
    if config.shrink:
        models["shrunk"] = load()
        shrink_report = shrink(models["shrunk"])
    models["converted"] = load()
    report = to_sparse_inference(models["converted"], config, example_inputs=inputs)
    expected = run_model(models["dense"], inputs)
    variants = {name: inference_call(m, inputs) for name, m in models.items()}
    timings = time_side_by_side(variants, "dense", rounds, 0.05, torch.device(device))
    result = {"batch_size": batch_size, "report": report, "shrink": shrink_report, "variants": {}}
    for name, m in models.items():
        out = run_model(m, inputs)
        result["variants"][name] = {
            "ms": 1e3 * timings[name].seconds,
            "speedup": timings[name].speedup,
            "range": timings[name].speedup_range,
            "max_abs_diff": float((out.double() - expected.double()).abs().max()),
            "top1_equal": bool((out.argmax(-1) == expected.argmax(-1)).all()),
            "bytes": module_bytes(m),
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


def results_json(results: list[dict]) -> str:
    """The numbers of `bench_batch` results as JSON (reports as dicts)."""
    data = [
        {**{k: v for k, v in r.items() if k not in ("report", "shrink")},
         "layers": r["report"].to_dict()["layers"],
         "shrink": None if r["shrink"] is None else r["shrink"].to_dict()}
        for r in results
    ]  # fmt: skip
    return json.dumps(data, indent=2) + "\n"
