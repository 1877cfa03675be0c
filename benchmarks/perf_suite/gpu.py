"""GPU suite, section 1: throughput and peak memory of SNIP/ReFer/AFR against a training step.

Per dtype (float32, bfloat16) and batch size, each memory mode of section 3 (`memory.py`) is
timed (best of 3) and its peak taken: `torch.cuda.max_memory_allocated` on a GPU, the
profiler's peak on CPU, so that the same code path runs in the unit tests. An out-of-memory
error on the GPU is a result (a row saying so), not a failure.
"""

from __future__ import annotations

import dataclasses
import gc
import platform

import torch

from .common import Runtime, best_time, build_model, make_batches
from .memory import mode_fn, parse_mode, profiled_peak, resident_bytes

GPU_MODES = ("train step", "snip", "refer", "afr", "afr, checkpointing")


@dataclasses.dataclass(frozen=True)
class GpuScoringSettings:
    shape: str
    batch_sizes: tuple[int, ...]
    modes: tuple[str, ...] = GPU_MODES
    dtypes: tuple[str, ...] = ("float32", "bfloat16")


PRESETS = {
    "gpu": GpuScoringSettings("ViT-B/16", (64, 128, 256)),
    "quick": GpuScoringSettings("ViT-S/16-6L", (4,)),
    "toy": GpuScoringSettings("toy", (2,)),
}


def _measure(mode: str, model, batch, rt: Runtime) -> dict:
    fn = mode_fn(mode, model, batch)
    fn()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        seconds = best_time(fn, 3, rt)
        peak = torch.cuda.max_memory_allocated()
    else:
        seconds = best_time(fn, 3, rt)
        peak = resident_bytes(model, batch) + profiled_peak(fn)[0]
    images = batch["pixel_values"].shape[0]
    return {"mode": mode, "seconds": seconds, "images_per_s": images / seconds, "peak": peak}


def run(settings: GpuScoringSettings, rt: Runtime) -> dict:
    for mode in settings.modes:
        if parse_mode(mode).engine_only:
            raise ValueError(f"Mode {mode!r} is a memory-section mode only; use {GPU_MODES}.")
    rows = []
    cuda = rt.device.type == "cuda"
    for dtype in settings.dtypes:
        drt = Runtime(rt.device, getattr(torch, dtype))
        for batch_size in settings.batch_sizes:
            model = build_model(settings.shape, drt)
            batch = make_batches(model, 1, batch_size, drt)[0]
            for mode in settings.modes:
                row = {"dtype": dtype, "batch_size": batch_size, "mode": mode}
                try:
                    row.update(_measure(mode, model, batch, drt))
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                rows.append(row)
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            del model, batch
    card = torch.cuda.get_device_name(rt.device) if cuda else platform.processor() or "CPU"
    return {"shape": settings.shape, "rows": rows, "card": card}


def markdown(result: dict) -> str:
    lines = [
        f"{result['shape']}, random weights, on {result['card']}.\n",
        "| dtype | batch | mode | images/s | vs SNIP time | peak GiB | peak vs train step |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    index = {(r["dtype"], r["batch_size"], r["mode"]): r for r in result["rows"]}
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['batch_size']} | {r['mode']} | {r['error']} |||")
            continue
        snip = index.get((r["dtype"], r["batch_size"], "snip"), {})
        train = index.get((r["dtype"], r["batch_size"], "train step"), {})
        vs_snip = f"{r['seconds'] / snip['seconds']:.3f}" if "seconds" in snip else "n/a"
        vs_train = f"{r['peak'] / train['peak']:.2f}" if "peak" in train else "n/a"
        lines.append(
            f"| {r['dtype']} | {r['batch_size']} | {r['mode']} | {r['images_per_s']:.1f} "
            f"| {vs_snip} | {r['peak'] / 2**30:.2f} | {vs_train} |"
        )
    return "\n".join(lines) + "\n"
