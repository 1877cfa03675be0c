"""Section 7: the cost of every data-driven criterion against SNIP, side by side.

SNIP, ReFer, AFR, GraSP, Fisher and SynFlow (with its default number of rounds and with
fewer) run end to end through `hf_afr.get_criterion(method).score` on the same batches, in
interleaved rounds (the order rotates every round); the ratios are medians of the per-round
ratios to SNIP. SynFlow reads no data: it runs its rounds at batch 1 whatever the batch.
Peak memory on a GPU is `torch.cuda.max_memory_allocated` over one call of each variant.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from .common import (
    Runtime,
    build_model,
    describe,
    interleaved,
    make_batches,
    ratio,
    require_finite,
    scorer,
)


@dataclasses.dataclass(frozen=True)
class CriteriaSettings:
    shape: str
    batch_size: int
    num_batches: int
    rounds: int
    synflow_iterations: tuple[int, ...]  # the default (100) and fewer


PRESETS = {
    # SynFlow's 100 rounds dominate: ~4 min per call on ViT-B/16 with 2 CPU cores.
    "full": CriteriaSettings("ViT-B/16", 4, 1, 2, (100, 10)),
    "quick": CriteriaSettings("ViT-S/16-6L", 2, 1, 2, (20, 5)),
    "toy": CriteriaSettings("toy", 4, 2, 2, (5, 2)),
    "gpu": CriteriaSettings("ViT-B/16", 32, 2, 3, (100, 10)),
}

METHODS = ("snip", "refer", "afr", "grasp", "fisher")


def variants(model, batches, settings: CriteriaSettings) -> dict:
    fns = {m: scorer(model, batches, m) for m in METHODS}
    for n in settings.synflow_iterations:
        fns[f"synflow ({n} rounds)"] = scorer(model, batches, "synflow", synflow_iterations=n)
    return fns


def peak_memory(fns: dict, rt: Runtime) -> dict[str, int | None]:
    """`torch.cuda.max_memory_allocated` over one call of each variant (None on a CPU)."""
    if rt.device.type != "cuda":
        return {name: None for name in fns}
    peaks = {}
    for name, fn in fns.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(rt.device)
        fn()
        rt.sync()
        peaks[name] = torch.cuda.max_memory_allocated(rt.device)
    return peaks


def run(settings: CriteriaSettings, rt: Runtime) -> dict:
    model = build_model(settings.shape, rt)
    batches = make_batches(model, settings.num_batches, settings.batch_size, rt)
    fns = variants(model, batches, settings)
    times = interleaved(fns, settings.rounds, rt)
    ratios = {name: ratio(times, name, "snip") for name in fns}
    require_finite(
        [t for ts in times.values() for t in ts] + [r["median"] for r in ratios.values()],
        f"criteria timing of {settings.shape}",
    )
    return {
        "shape": settings.shape,
        "model": describe(model),
        "batch_size": settings.batch_size,
        "num_batches": settings.num_batches,
        "rounds": settings.rounds,
        "times": times,
        "ratios": ratios,
        "peak_memory": peak_memory(fns, rt),
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['shape']} ({result['model']}), {result['num_batches']} x "
        f"{result['batch_size']} images, {result['rounds']} rounds:",
        "",
        "| criterion | s (median) | / SNIP (range) | peak memory |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in result["times"].items():
        r = result["ratios"][name]
        peak = result["peak_memory"][name]
        memory = "n/a (CPU)" if peak is None else f"{peak / 2**20:.0f} MiB"
        lines.append(
            f"| {name} | {statistics.median(ts):.3f} | **{r['median']:.2f}** "
            f"({r['low']:.2f}-{r['high']:.2f}) | {memory} |"
        )
    note = (
        "\nOne scoring call per variant and round, end to end (the registered criterion). "
        "SynFlow runs one forward and one backward pass at batch 1 per round (float32, float64 "
        "only after an overflow) and reads no data: its time does not grow with the scoring "
        "images, SNIP's does.\n"
    )
    return "\n".join(lines) + "\n" + note
