"""Inference of pruned models: dense vs converted (`hf_afr.to_sparse_inference`), side by side.

1. ViT-B/16 shape, random weights: random masks and masks with AFR-like structure at
   90/95/98%, and 2:4; batch 1 and 8: end-to-end latency ratio (median of per-round ratios,
   dense and converted interleaved), resident weight memory, output difference, kernels chosen.
2. The main job's output (`python scripts/finetune.py scripts/quickstart.json` writes
   `outputs/tiny-vit-glyphs-afr90-digits`) at batch 64: dense vs shrunk vs converted, encoder
   Linear multiply-adds, predictions and logits on the digits validation set.
3. How much each criterion's masks shrink: the embedded model scored on digits batches, per
   criterion and sparsity, the Linear multiply-adds and MLP hidden units that `shrink` removes.

    python benchmarks/inference.py           # full: about 12-15 minutes on 2 quiet CPU cores
    python benchmarks/inference.py --quick   # small shapes, well under a minute

Writes `inference.md` and `inference.json` to `--output_dir` (default `benchmarks/results/`).
"AFR-like" masks are synthetic: scores |w| times a log-normal factor per MLP hidden unit
(sigma 1.5, shared by its fc1 row and fc2 column) and per attention dimension (sigma 0.5,
shared by q/k rows, and by v rows and o columns), selected globally. At 90% this empties
about 60-65% of the MLP hidden units, near the main job's output (52-91% per layer).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging

from hf_afr import PrunerConfig, SparseInferenceConfig, apply_masks, find_prunable_parameters
from hf_afr.inference import module_bytes, shrink, shrinkable, to_sparse_inference
from hf_afr.inference.convert import run_model
from hf_afr.inference.timing import inference_call, time_side_by_side
from hf_afr.masks import select_masks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vit_shapes import SHAPES  # noqa: E402

MAIN_JOB_OUTPUT = "outputs/tiny-vit-glyphs-afr90-digits"
SECTIONS = ("vit", "main", "criteria")
MAIN_MIN_TIME = 0.25  # seconds per measurement of the main job's batch (several calls)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few rounds (for tests)")
    p.add_argument("--output_dir", default="benchmarks/results")
    p.add_argument("--model_dir", default=MAIN_JOB_OUTPUT, help="the main job's output")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=None, help="end-to-end rounds (5; quick 3)")
    p.add_argument("--layer_rounds", type=int, default=3, help="per-layer rounds (3)")
    p.add_argument(
        "--main_rounds", type=int, default=None,
        help="rounds of the main job's timing, each measurement >= 0.25 s (21; quick 3)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument(
        "--structures", nargs="+", default=["random", "2:4", "afr-like"], help="ViT-B/16 masks"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--output_name", default="inference", help="writes <name>.md and <name>.json")
    p.add_argument(
        "--tabulate_only", action="store_true", help="rewrite <name>.md from an existing .json"
    )
    args = p.parse_args(argv)
    for name in ("rounds", "layer_rounds", "main_rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be a positive integer (got {value}).")
    args.dtype = getattr(torch, args.dtype)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.main_rounds = args.main_rounds or (3 if args.quick else 21)
    return args


def unit_factors(shape_rows: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return torch.exp(sigma * torch.randn(shape_rows, generator=generator))


def afr_like_scores(params: dict[str, torch.nn.Parameter], seed: int) -> dict[str, torch.Tensor]:
    """|w| times log-normal factors shared by the rows/columns that shrink together."""
    generator = torch.Generator().manual_seed(seed)
    scores, factors = {}, {}
    for name, p in params.items():
        w = p.detach().abs()
        block = name.rsplit(".", 2)[0]
        if name.endswith(("fc1.weight", "fc2.weight")):
            u = factors.setdefault(
                block, unit_factors(w.shape[0 if "fc1" in name else 1], 1.5, generator)
            )
            scores[name] = w * (u[:, None] if "fc1" in name else u[None, :])
        else:
            key = block + (".qk" if name.endswith(("q_proj.weight", "k_proj.weight")) else ".vo")
            a = factors.setdefault(
                key, unit_factors(w.shape[1 if "o_proj" in name else 0], 0.5, generator)
            )
            scores[name] = w * (a[None, :] if "o_proj" in name else a[:, None])
    return scores


def pruned_vit(shape: dict, structure: str, sparsity: float | None, seed: int = 0):
    """A random-weight ViT whose encoder Linear weights are pruned with the given masks."""
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(**shape, num_labels=10)).eval()
    params = find_prunable_parameters(model, PrunerConfig())
    generator = torch.Generator().manual_seed(seed + 1)
    if structure == "2:4":
        masks = select_masks({n: p.detach().abs() for n, p in params.items()}, 0.5, pattern="2:4")
    elif structure == "random":
        masks = {n: torch.rand(p.shape, generator=generator) >= sparsity for n, p in params.items()}
    else:
        masks = select_masks(afr_like_scores(params, seed), sparsity, "global")
    apply_masks(params, masks)
    return model


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of the encoder's Linear layers (dense or converted)."""
    return sum(
        module_bytes(m)
        for n, m in model.named_modules()
        if ".layers." in n and n.endswith(("_proj", "fc1", "fc2"))
    )


def vit_case(args, shape: dict, structure: str, sparsity: float | None) -> list[dict]:
    base = pruned_vit(shape, structure, sparsity).to(args.device, args.dtype)
    shrunk = copy.deepcopy(base)
    shrink_report = shrink(shrunk)
    rows = []
    for batch in args.batch_sizes:
        size = shape["image_size"]
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        inputs = {"pixel_values": x.to(args.device, args.dtype)}
        converted = copy.deepcopy(base)
        config = SparseInferenceConfig(timing_rounds=args.layer_rounds)
        start = time.perf_counter()
        report = to_sparse_inference(converted, config, example_inputs=inputs)
        seconds = time.perf_counter() - start
        models = {"dense": base, "converted": converted}
        if shrink_report.macs_reduction > 0.01:  # otherwise shrunk is the dense model
            models["shrunk"] = shrunk
        t = time_side_by_side(
            {name: inference_call(m, inputs) for name, m in models.items()},
            "dense", args.rounds, 0.0 if args.quick else 0.2, torch.device(args.device),
        )  # fmt: skip
        kernels = {}
        for layer in report.layers:
            kernels[layer.kernel] = kernels.get(layer.kernel, 0) + 1
        rows.append({
            "structure": structure, "sparsity": 0.5 if structure == "2:4" else sparsity,
            "batch": batch, "dense_ms": 1e3 * t["dense"].seconds,
            "shrunk_speedup": t["shrunk"].speedup if "shrunk" in t else None,
            "converted_ms": 1e3 * t["converted"].seconds, "speedup": t["converted"].speedup,
            "speedup_range": t["converted"].speedup_range,
            "linear_bytes_dense": linear_bytes(base), "linear_bytes": linear_bytes(converted),
            "model_bytes_dense": module_bytes(base), "model_bytes": module_bytes(converted),
            "max_abs_diff": report.max_abs_diff, "kernels": kernels,
            "shrink_macs_reduction": shrink_report.macs_reduction, "convert_seconds": seconds,
            "semi_structured": next(
                (c.skipped["semi_structured"] for c in report.layers if "semi_structured" in c.skipped),
                None,
            ),
        })  # fmt: skip
        del converted
    return rows


def digits_validation(model_dir: str, limit: int | None) -> torch.Tensor:
    from transformers import AutoImageProcessor

    from hf_afr.data import digits_dataset

    images = digits_dataset("test")["image"]
    images = [im.convert("RGB") for im in images[:limit]]
    processor = AutoImageProcessor.from_pretrained(model_dir)
    return processor(images, return_tensors="pt")["pixel_values"]


def main_job_section(args) -> dict | None:
    from transformers import AutoModelForImageClassification

    if not os.path.isdir(args.model_dir):
        return {"missing": args.model_dir}

    def load():
        model = AutoModelForImageClassification.from_pretrained(args.model_dir)
        return model.to(args.device, args.dtype).eval()

    pixels = digits_validation(args.model_dir, 64 if args.quick else None).to(
        args.device, args.dtype
    )
    batch = {"pixel_values": pixels[:64]}
    dense, shrunk, converted = load(), load(), load()
    shrink_report = shrink(shrunk)
    config = SparseInferenceConfig(timing_rounds=args.layer_rounds)
    to_sparse_inference(converted, config, example_inputs=batch)
    models = {"dense": dense, "shrunk": shrunk, "converted": converted}
    # The whole validation set first, as an evaluation does: the timing below then measures the
    # steady state (timed from a cold process on one batch, the dense side runs 10-20% slower).
    logits = {name: run_model(m, {"pixel_values": pixels}) for name, m in models.items()}
    min_time = 0.0 if args.quick else MAIN_MIN_TIME
    t = time_side_by_side(
        {name: inference_call(m, batch) for name, m in models.items()},
        "dense", args.main_rounds, min_time, torch.device(args.device),
    )  # fmt: skip
    out = {"model_dir": args.model_dir, "images": len(pixels), "batch": len(batch["pixel_values"])}
    out["rounds"], out["min_time"] = args.main_rounds, min_time
    out["shrink"] = shrink_report.to_dict()
    out["shrink_table"] = shrink_report.to_markdown()
    for name in models:
        out[name] = {
            "ms": 1e3 * t[name].seconds, "speedup": t[name].speedup,
            "best_speedup": t[name].best_speedup,
            "speedup_range": t[name].speedup_range, "bytes": module_bytes(models[name]),
            "max_abs_diff": float((logits[name].float() - logits["dense"].float()).abs().max()),
            "same_predictions": bool((logits[name].argmax(-1) == logits["dense"].argmax(-1)).all()),
        }  # fmt: skip
    return out


def criteria_section(args) -> list[dict]:
    """Per criterion and sparsity: what `shrink` removes from the embedded model's masks."""
    from hf_afr import DEFAULT_MODEL, AFRPruner
    from hf_afr.data import digits_arrays

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import combined_criteria  # noqa: F401  (registers refer_snip_log_z)

    x, y = digits_arrays("train")
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(10_000))
    nb, bs = (1, 16) if args.quick else (4, 32)
    batches = [
        {"pixel_values": x[idx[i * bs : (i + 1) * bs]], "labels": torch.as_tensor(y)[idx[i * bs : (i + 1) * bs]]}
        for i in range(nb)
    ]  # fmt: skip
    methods = (
        ["magnitude", "afr"]
        if args.quick
        else ["random", "magnitude", "snip", "refer", "afr", "synflow", "grasp", "fisher"]
        + ["refer_snip_log_z"]
    )
    rows = []
    for method in methods:
        pruner = AFRPruner.from_pretrained(
            DEFAULT_MODEL, PrunerConfig(method=method, num_batches=nb), num_labels=10
        )
        scores = pruner.compute_scores(batches, show_progress=False)
        for sparsity in args.sparsities:
            pruner.set_masks(select_masks(scores, sparsity))
            report = shrinkable(pruner.model)
            rows.append({
                "method": method, "sparsity": sparsity, "macs_reduction": report.macs_reduction,
                "blocks": [
                    {"name": b.name, "kind": b.kind, "units_removed": 1 - b.units_after / b.units_before,
                     "macs_removed": 1 - b.macs_after / b.macs_before}
                    for b in report.blocks
                ],
            })  # fmt: skip
    return rows


def to_markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# hf_afr inference ({'quick' if meta['quick'] else 'full-size'} run"
        f"{'' if all(results.get(k) for k in SECTIONS) else ', some sections'})",
        "",
        f"`{meta['command']}`; {meta['date']}; torch {meta['torch']}, {meta['cpus']} CPUs, "
        f"{meta['threads']} torch threads, device {meta['device']}, {meta['dtype']}. Load average at start {meta['load_start']}, "
        f"at end {meta['load_end']}. Wall time {meta['wall_seconds'] / 60:.1f} min.",
    ]
    if meta.get("finished") is None:
        lines += ["", "**Incomplete run**: it stopped before recording its last finished step."]
    elif meta["finished"] != "done":
        lines += ["", f"**Incomplete run**: stopped after step '{meta['finished']}'."]
    if results.get("vit"):
        lines += vit_table(results["vit"], meta)
    if results.get("main"):
        lines += main_table(results["main"])
    if results.get("criteria"):
        lines += criteria_table(results["criteria"])
    return "\n".join(lines) + "\n"


def vit_table(rows: list[dict], meta: dict) -> list[str]:
    lines = [
        "", f"## 1. {meta['shape_name']}, random weights: dense vs converted", "",
        "| masks | sparsity | batch | dense ms | shrunk only | converted ms | converted speed-up "
        "(range) | encoder Linear memory | whole model memory | kernels | MACs removed by shrink | "
        "max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        kernels = ", ".join(f"{k} {v}" for k, v in sorted(r["kernels"].items()))
        lines.append(
            f"| {r['structure']} | {r['sparsity']:.0%} | {r['batch']} | {r['dense_ms']:.1f} | "
            f"{_ratio(r['shrunk_speedup'])} | {r['converted_ms']:.1f} | **{r['speedup']:.2f}x** ({r['speedup_range'][0]:.2f}-"
            f"{r['speedup_range'][1]:.2f}) | {r['linear_bytes'] / r['linear_bytes_dense']:.1%} | "
            f"{r['model_bytes'] / r['model_bytes_dense']:.1%} | {kernels} | "
            f"{r['shrink_macs_reduction']:.1%} | {r['max_abs_diff']:.1e} |"
        )
    reason = next((r["semi_structured"] for r in rows if r["semi_structured"]), None)
    lines += [
        "",
        "Speed-ups: median over rounds of dense time / variant time, the variants (dense, "
        "shrunk only where shrinking removes anything, converted = shrunk + per-layer kernels) "
        "interleaved. Memory: bytes held by "
        "parameters and buffers, converted / dense. The kernel choice is made per batch size "
        "(conversion on that batch's shapes).",
    ]
    if reason:
        lines.append(f"2:4 semi-structured kernel on this machine: unavailable ({reason}).")
    return lines


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def main_table(main: dict) -> list[str]:
    if "missing" in main:
        return ["", f"## 2. The main job's output: {main['missing']} not found (run "
                "`python scripts/finetune.py scripts/quickstart.json` first)."]  # fmt: skip
    lines = [
        "", f"## 2. The main job's output ({main['model_dir']}), batch {main['batch']}", "",
        f"Logits and predictions on {main['images']} digits validation images. {_rounds(main)}",
        "", "| variant | ms / batch | speed-up vs dense (range) | fastest call vs fastest call | "
        "resident bytes | max abs logit diff | same predictions |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for name in ("dense", "shrunk", "converted"):
        v = main[name]
        best = f"{v['best_speedup']:.2f}x" if "best_speedup" in v else "—"
        lines.append(
            f"| {name} | {v['ms']:.1f} | **{v['speedup']:.2f}x** ({v['speedup_range'][0]:.2f}-"
            f"{v['speedup_range'][1]:.2f}) | {best} | {v['bytes']:,} | {v['max_abs_diff']:.1e} | "
            f"{'yes' if v['same_predictions'] else 'NO'} |"
        )
    lines += ["", f"Encoder Linear multiply-adds removed by shrink: "
              f"**{main['shrink']['macs_reduction']:.1%}**.", "", main["shrink_table"]]  # fmt: skip
    return lines


def _rounds(main: dict) -> str:
    if "rounds" not in main:
        return ""
    return (
        f"Speed-up: median of {main['rounds']} per-round ratios (range in brackets), the three "
        f"variants interleaved, each measured over >= {main['min_time']:g} s of calls per round."
    )


def criteria_table(rows: list[dict]) -> list[str]:
    lines = [
        "", "## 3. How much each criterion's masks shrink (embedded model, digits scoring batches)", "",
        "| criterion | sparsity | Linear MACs removed | MLP hidden units removed, per layer | "
        "attention q/k/v dims removed, per layer |", "|---|---:|---:|---|---|",
    ]  # fmt: skip
    for r in rows:
        mlp = " / ".join(f"{b['units_removed']:.0%}" for b in r["blocks"] if b["kind"] == "mlp")
        att = " / ".join(
            f"{b['units_removed']:.0%}" for b in r["blocks"] if b["kind"] == "attention"
        )
        lines.append(
            f"| {r['method']} | {r['sparsity']:.0%} | **{r['macs_reduction']:.1%}** | {mlp} | {att} |"
        )
    lines += ["", "Structure only (no fine-tuning): what `hf_afr.shrink` removes exactly from each "
              "criterion's masks; per layer from the first encoder layer to the last."]  # fmt: skip
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tabulate_only:
        path = Path(args.output_dir) / f"{args.output_name}.json"
        results = json.loads(path.read_text())
        text = to_markdown(results)
        path.with_suffix(".md").write_text(text)
        print(text)
        return results
    torch.set_num_threads(args.threads)
    logging.set_verbosity_error()
    start = time.perf_counter()
    shape_name = "quick shape (hidden 128, 2 layers, 64 px)" if args.quick else "ViT-B/16 shape"
    meta = {
        "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": args.device, "dtype": str(args.dtype).replace("torch.", ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "quick": args.quick,
        "platform": platform.platform(), "shape_name": shape_name,
        "load_start": " / ".join(f"{v:.2f}" for v in os.getloadavg()),
    }  # fmt: skip
    results: dict = {"meta": meta}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(step: str) -> str:
        """Write the tables so far (a stopped run keeps what it measured) and log progress."""
        meta["wall_seconds"] = time.perf_counter() - start
        meta["load_end"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        meta["finished"] = step
        text = to_markdown(results)
        (out / f"{args.output_name}.md").write_text(text)
        (out / f"{args.output_name}.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"[{meta['wall_seconds'] / 60:.1f} min] {step}", file=sys.stderr, flush=True)
        return text

    # The cheap sections first: the main job's targets, then the criteria, then ViT-B/16.
    if "main" in args.sections:
        results["main"] = main_job_section(args)
        save("main job output")
    if "criteria" in args.sections:
        results["criteria"] = criteria_section(args)
        save("criteria")
    if "vit" in args.sections:
        shape = SHAPES["quick" if args.quick else "full"]
        results["vit"] = []
        cases = [("random", p) for p in args.sparsities] + [("2:4", None)]
        cases += [("afr-like", p) for p in args.sparsities]
        cases = [(st, p) for st, p in cases if st in args.structures]
        for structure, sparsity in cases:
            results["vit"] += vit_case(args, shape, structure, sparsity)
            save(f"{structure} {sparsity or ''}")
    print(save("done"))
    return results


if __name__ == "__main__":
    main()
