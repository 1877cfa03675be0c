"""Performance of hf_afr in one run: scoring cost, memory, mask upkeep, scaling, checkpoints.

Machines running this are often shared and noisy, so every comparison is measured side by
side in the same run: the variants of one table are run in interleaved rounds (the order
rotates every round) and the ratios are medians of the per-round ratios. Absolute times
are only there to read the ratios.

Sections (each prints one markdown table):

1. Scoring time: ReFer/SNIP and AFR/SNIP on the same batches (targets 1.10 and 1.70; the
   stretch goal is AFR/SNIP < 1.5), plus AFR through one batched backward
   (`is_grads_batched`) and SNIP + ReFer run separately, for comparison.
2. Where the time goes: a `torch.profiler` breakdown of each criterion into forward,
   objectives (loss, SVD), each backward pass, SVD backward, gradient accumulation and
   the rest, and the floor (F + 2B) / (F + B) that it implies for AFR/SNIP.
3. Peak memory of scoring against one plain training step (forward, backward, AdamW step)
   at the same batch size, each in a fresh process, with micro-batching and gradient
   checkpointing (target AFR <= 1.3x). CPU: peak of the bytes held by tensors, from the
   profiler's allocation events (weights, batch and anything allocated before counted
   once, as `torch.cuda.max_memory_allocated` does on a GPU), and the growth of the
   process's peak RSS; CUDA: `torch.cuda.max_memory_allocated`.
4. Mask upkeep: a `Trainer` step with `PruningMaskCallback` against one without (target
   <= 3% slower), and the direct cost of the added work.
5. Scaling: scoring time against the number of scoring samples and the parameter count,
   with least-squares line fits.
6. Checkpoints: `benchmarks/checkpoint_size.py` (dense vs compact sizes, information bound,
   save/load times), called rather than duplicated.

    python benchmarks/perf.py            # full CPU run, writes benchmarks/results/perf.{md,json}
    python benchmarks/perf.py --quick    # smoke run of every section on small shapes
    python benchmarks/perf.py --suite gpu --device cuda --output benchmarks/results/perf-gpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)
from transformers.utils import logging

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from hf_afr import DEFAULT_MODEL, PrunerConfig, find_prunable_parameters, get_criterion  # noqa: E402
from hf_afr.criteria import gradients  # noqa: E402
from hf_afr.criteria.afr import sum_of_z_scores  # noqa: E402
from hf_afr.enforcement import MaskEnforcer, PruningMaskCallback  # noqa: E402
from hf_afr.masks import apply_masks  # noqa: E402

METHODS = ("snip", "refer", "afr")
NUM_LABELS = 10

# ViTConfig keyword arguments of the model shapes used below (random weights).
SHAPES: dict[str, dict[str, int]] = {
    # ViT-B/16: the ViTConfig defaults.
    "ViT-B/16": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
    ),
    # ViT-S/16 width at half depth: the timing model (ViT-B/16 costs ~1.4 s per image on 2 cores).
    "ViT-S/16-6L": dict(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=224,
        patch_size=16,
    ),
    # Shape of the embedded default model, used when that model is not shipped.
    "tiny": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=32,
        patch_size=4,
    ),
    # A toy for the unit test.
    "toy": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    ),
}

TARGETS = {"refer/snip": 1.10, "afr/snip": 1.70, "afr/snip stretch": 1.50, "memory": 1.30}
MASK_TARGET = 0.03


@dataclasses.dataclass
class Settings:
    """Sizes of one run; `FULL`, `QUICK` and `TOY` below (a GPU run uses `GPU`)."""

    name: str
    timing: list[tuple[str, int, int, int]]  # (shape, batch size, scoring batches, rounds)
    profile: tuple[str, int]  # (shape, batch size)
    memory_shape: str
    memory_batches: list[int]
    memory_modes: list[str]
    memory_subprocess: bool
    upkeep: list[tuple[str, int, int, int]]  # (shape, batch size, steps per round, rounds)
    scaling_shape: str
    scaling_batch: int
    scaling_batches: list[int]  # numbers of scoring batches
    scaling_depths: list[int]
    scaling_widths: list[int]
    scaling_repeats: int
    checkpoint_sparsities: list[float]
    checkpoint_shape: str | None  # None: checkpoint_size.py's own ViT-B/16
    sections: tuple[str, ...] = ("timing", "profile", "memory", "upkeep", "scaling", "checkpoints")


ALL_MEMORY_MODES = [
    "train step",
    "snip",
    "refer",
    "afr",
    "afr, micro-batch",
    "afr, checkpointing",
    "afr, micro-batch + checkpointing",
    "afr gradients",
    "afr gradients, micro-batch + checkpointing",
]

FULL = Settings(
    name="full",
    timing=[("ViT-S/16-6L", 8, 1, 7), ("ViT-S/16-6L", 8, 4, 3), ("ViT-B/16", 4, 1, 5)],
    profile=("ViT-S/16-6L", 8),
    memory_shape="ViT-B/16",
    memory_batches=[2, 4, 8],
    memory_modes=ALL_MEMORY_MODES,
    memory_subprocess=True,
    upkeep=[("default", 32, 20, 5), ("ViT-B/16", 2, 5, 5)],
    scaling_shape="ViT-S/16-6L",
    scaling_batch=4,
    scaling_batches=[1, 2, 4, 8],
    scaling_depths=[2, 4, 8, 12],
    scaling_widths=[192, 384, 576, 768],
    scaling_repeats=2,
    checkpoint_sparsities=[0.9, 0.95, 0.98],
    checkpoint_shape=None,
)

QUICK = Settings(
    name="quick",
    timing=[("ViT-S/16-6L", 2, 1, 2)],
    profile=("ViT-S/16-6L", 2),
    memory_shape="ViT-S/16-6L",
    memory_batches=[4],
    memory_modes=["train step", "afr", "afr, micro-batch + checkpointing", "afr gradients"],
    memory_subprocess=True,
    upkeep=[("default", 16, 5, 2)],
    scaling_shape="ViT-S/16-6L",
    scaling_batch=2,
    scaling_batches=[1, 2, 3],
    scaling_depths=[2, 4, 6],
    scaling_widths=[],
    scaling_repeats=1,
    checkpoint_sparsities=[0.9],
    checkpoint_shape="ViT-S/16-6L",
)

TOY = Settings(
    name="toy",
    timing=[("toy", 4, 2, 1)],
    profile=("toy", 4),
    memory_shape="toy",
    memory_batches=[4],
    memory_modes=ALL_MEMORY_MODES,
    memory_subprocess=False,
    upkeep=[("toy", 4, 2, 1)],
    scaling_shape="toy",
    scaling_batch=2,
    scaling_batches=[1, 2],
    scaling_depths=[1, 2],
    scaling_widths=[16, 32],
    scaling_repeats=1,
    checkpoint_sparsities=[0.9],
    checkpoint_shape="toy",
)

GPU = Settings(
    name="gpu",
    timing=[],
    profile=("ViT-B/16", 64),
    memory_shape="ViT-B/16",
    memory_batches=[64, 128, 256],
    memory_modes=["train step", "snip", "refer", "afr", "afr, checkpointing"],
    memory_subprocess=False,
    upkeep=[("ViT-B/16", 64, 15, 2)],
    scaling_shape="ViT-B/16",
    scaling_batch=64,
    scaling_batches=[],
    scaling_depths=[],
    scaling_widths=[],
    scaling_repeats=1,
    checkpoint_sparsities=[],
    checkpoint_shape=None,
    sections=("gpu_scoring", "profile", "upkeep"),
)


# --------------------------------------------------------------------------- models, data


@dataclasses.dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def shape_kwargs(shape: str | dict) -> dict[str, int]:
    if isinstance(shape, dict):
        base = dict(SHAPES[shape.get("base", "ViT-S/16-6L")])
        base.update({k: v for k, v in shape.items() if k != "base"})
        return base
    return dict(SHAPES[shape])


def build_model(shape: str | dict, rt: Runtime, seed: int = 0) -> ViTForImageClassification:
    """A random-weight ViT classifier of the given shape, or the embedded default model."""
    if shape == "default":
        if (Path(DEFAULT_MODEL) / "config.json").is_file():
            model = ViTForImageClassification.from_pretrained(
                DEFAULT_MODEL, num_labels=NUM_LABELS, ignore_mismatched_sizes=True
            )
            return model.to(rt.device, rt.dtype).eval()
        shape = "tiny"
    torch.manual_seed(seed)
    config = ViTConfig(num_labels=NUM_LABELS, **shape_kwargs(shape))
    return ViTForImageClassification(config).to(rt.device, rt.dtype).eval()


def describe(model: ViTForImageClassification) -> str:
    c = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (
        f"hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.image_size} px, "
        f"patch {c.patch_size}, {params:.1f}M params"
    )


def describe_shape(shape: str | dict) -> str:
    """`describe` of a shape, from a model built on the meta device (no memory, no init cost)."""
    if shape == "default":
        return "the embedded default model"
    with torch.device("meta"):
        return describe(
            ViTForImageClassification(ViTConfig(num_labels=NUM_LABELS, **shape_kwargs(shape)))
        )


def make_batches(model, n_batches: int, batch_size: int, rt: Runtime, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    return [
        {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator).to(
                rt.device, rt.dtype
            ),
            "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(
                rt.device
            ),
        }
        for _ in range(n_batches)
    ]


def scorer(model, batches, method: str, **config_kwargs) -> Callable[[], Any]:
    """A zero-argument callable running the registered criterion end to end."""
    config = PrunerConfig(method=method, num_batches=len(batches), **config_kwargs)
    params = find_prunable_parameters(model, config)
    criterion = get_criterion(method)
    return lambda: criterion.score(model, batches, params, config)


def afr_batched_vjp(model, batches) -> Callable[[], Any]:
    """AFR with both gradients from one batched backward (`is_grads_batched=True`).

    Kept here only to compare with the library's engine (one backward per objective); the
    |g*w| and z-score stage is the library's, so only the backward passes differ.
    """
    config = PrunerConfig(method="afr", num_batches=len(batches))
    params = find_prunable_parameters(model, config)
    names, objectives = list(params), ("loss", "refer")

    def run():
        sums = [dict.fromkeys(names) for _ in objectives]
        with gradients.scoring_mode(model, params):
            for raw in batches:
                batch = gradients.prepare_batch(raw, model, needs_labels=True)
                n = batch["pixel_values"].shape[0]
                outputs, values = gradients._forward(model, batch, objectives)
                loss, refer = gradients._objective_values(
                    outputs, values, batch, objectives, config, n, None, 0, model.config
                )
                eye = torch.eye(2, device=loss.device, dtype=loss.dtype)
                grads = torch.autograd.grad(
                    torch.stack([loss, refer]),
                    [params[k] for k in names],
                    grad_outputs=eye,
                    is_grads_batched=True,
                )
                for name, g in zip(names, grads):
                    for k in range(2):
                        prev = sums[k][name]
                        sums[k][name] = g[k].float() if prev is None else prev.add_(g[k])
        return sum_of_z_scores(*(gradients.connection_sensitivity(s, params) for s in sums))

    return run


def z_score_seconds(model, batches, rt: Runtime, repeats: int = 2) -> float:
    """Time of AFR's z-score stage alone (`sum_of_z_scores` of both scores, as in
    `afr_scores`), in the state a real scoring call leaves: right after the gradients of
    `batches` (allocator state included). Best of `repeats`."""
    config = PrunerConfig(method="afr", num_batches=len(batches))
    params = find_prunable_parameters(model, config)
    samples = []
    for _ in range(repeats):
        sums = gradients.accumulate_gradients(model, batches, params, config, ("loss", "refer"))
        a, b = (gradients.connection_sensitivity(s, params) for s in sums)
        rt.sync()
        start = time.perf_counter()
        sum_of_z_scores(a, b)
        rt.sync()
        samples.append(time.perf_counter() - start)
        del sums, a, b
    return min(samples)


# --------------------------------------------------------------------------- timing helpers


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, rt: Runtime) -> dict:
    """Per-variant times of `rounds` rounds; the order rotates each round. One warm-up call."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rt.sync()
            start = time.perf_counter()
            fns[name]()
            rt.sync()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    per_round = [a / b for a, b in zip(times[num], times[den])]
    return {
        "median": statistics.median(per_round),
        "low": min(per_round),
        "high": max(per_round),
        "of_minimums": min(times[num]) / min(times[den]),
    }


def verdict(value: float, target: float) -> str:
    if value <= target:
        return f"met ({value:.2f} <= {target:.2f})"
    return f"missed by {value / target - 1:.1%} ({value:.2f} > {target:.2f})"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- 1. scoring time


def bench_timing(settings: Settings, rt: Runtime) -> dict:
    rows = []
    for shape, batch_size, n_batches, rounds in settings.timing:
        model = build_model(shape, rt)
        batches = make_batches(model, n_batches, batch_size, rt)
        fns = {m: scorer(model, batches, m) for m in METHODS}
        fns["afr, batched VJP"] = afr_batched_vjp(model, batches)
        times = interleaved(fns, rounds, rt)
        rows.append(
            {
                "shape": shape,
                "model": describe(model),
                "batch_size": batch_size,
                "num_batches": n_batches,
                "rounds": rounds,
                "times": times,
                "refer/snip": ratio(times, "refer", "snip"),
                "afr/snip": ratio(times, "afr", "snip"),
                "afr batched/snip": ratio(times, "afr, batched VJP", "snip"),
                "separate/snip": {
                    "median": statistics.median(
                        (a + b) / c for a, b, c in zip(times["refer"], times["snip"], times["snip"])
                    )
                },
            }
        )
        del model, batches, fns
    return {"rows": rows}


def timing_markdown(result: dict) -> str:
    lines = [
        "| model | batch x batches | rounds | SNIP s | ReFer s | AFR s | ReFer/SNIP | AFR/SNIP "
        "| AFR batched-VJP/SNIP | SNIP+ReFer separately/SNIP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for row in result["rows"]:
        t = {k: statistics.median(v) for k, v in row["times"].items()}
        rs, ra, rb = row["refer/snip"], row["afr/snip"], row["afr batched/snip"]
        lines.append(
            f"| {row['shape']} ({row['model']}) | {row['batch_size']} x {row['num_batches']} "
            f"| {row['rounds']} "
            f"| {t['snip']:.3f} | {t['refer']:.3f} | {t['afr']:.3f} "
            f"| **{rs['median']:.3f}** ({rs['low']:.2f}-{rs['high']:.2f}) "
            f"| **{ra['median']:.3f}** ({ra['low']:.2f}-{ra['high']:.2f}) "
            f"| {rb['median']:.3f} "
            f"| {row['separate/snip']['median']:.3f} |"
        )
        verdicts.append(
            f"- {row['shape']}, {row['batch_size']} x {row['num_batches']}: ReFer/SNIP {verdict(rs['median'], TARGETS['refer/snip'])}; "
            f"AFR/SNIP {verdict(ra['median'], TARGETS['afr/snip'])}; stretch goal AFR/SNIP < 1.5: "
            f"{'reached' if ra['median'] < TARGETS['afr/snip stretch'] else 'not reached'}."
        )
    note = (
        "\nTimes: medians over the rounds of one scoring call on `batches` batches of `batch` "
        "images (the registered criterion end to end, z-scores included; the library's default "
        "is `num_batches=4`, and the z-score stage is paid once per call). Ratios: median of the "
        "per-round ratios (range in "
        "brackets). *Batched VJP*: AFR's two gradients from one `torch.autograd.grad(..., "
        "is_grads_batched=True)` backward instead of two backward passes (not used by the "
        "library; same |g*w| and z-score stage). *Separately*: SNIP and ReFer each with its own "
        "forward pass (the sum of their times).\n"
    )
    return "\n".join(lines) + "\n" + note + "\n" + "\n".join(verdicts) + "\n"


# --------------------------------------------------------------------------- 2. profile

STAGES = [
    ("forward", "hf_afr::forward"),
    ("objectives (loss, SVD forward)", "hf_afr::objectives"),
    ("micro-batch feature pass", "hf_afr::feature_grads"),
    ("backward: loss", "hf_afr::backward[loss]"),
    ("backward: refer", "hf_afr::backward[refer]"),
]
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")


def profile_method(fn: Callable[[], Any], rt: Runtime) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile, record_function

    fn()  # warm-up
    activities = [ProfilerActivity.CPU]
    if rt.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof, record_function("perf::score"):
        fn()
        rt.sync()
    totals: dict[str, float] = {}
    self_times: dict[str, float] = {}
    for event in prof.key_averages():
        total = event.cpu_time_total
        if rt.device.type == "cuda" and event.key.startswith("hf_afr::"):
            # CUDA runs asynchronously: a stage's cost is the GPU time of its kernels.
            total = getattr(event, "device_time_total", 0) or total
        totals[event.key] = total / 1e3
        self_times[event.key] = event.self_cpu_time_total / 1e3
    out = {label: totals.get(key, 0.0) for label, key in STAGES}
    out["SVD forward"] = totals.get("aten::linalg_svdvals", 0.0)
    out["SVD backward"] = sum(
        v for k, v in totals.items() if "evaluate_function" in k and "SvdBackward" in k
    )
    out["gradient accumulation (hooks)"] = totals.get("hf_afr::accumulate", 0.0)
    out["total"] = totals.get("perf::score", 0.0)
    staged = sum(out[label] for label, _ in STAGES)
    out["other (batch prep, |g*w|, z-scores, setup)"] = out["total"] - staged
    cpu_total = sum(self_times.values())
    out["matmul share of CPU time"] = sum(self_times.get(k, 0.0) for k in MATMUL_OPS) / max(
        cpu_total, 1e-9
    )
    out["attention share of CPU time"] = sum(
        v for k, v in self_times.items() if "scaled_dot_product" in k
    ) / max(cpu_total, 1e-9)
    return out


def bench_profile(settings: Settings, rt: Runtime) -> dict:
    shape, batch_size = settings.profile
    model = build_model(shape, rt)
    batches = make_batches(model, 1, batch_size, rt)
    result = {m: profile_method(scorer(model, batches, m), rt) for m in METHODS}
    result["afr"]["z-score stage, measured apart"] = 1e3 * z_score_seconds(model, batches, rt)
    engine = {m: sum(result[m][label] for label, _ in STAGES) for m in METHODS}
    snip = result["snip"]
    forward = snip["forward"] + snip["objectives (loss, SVD forward)"]
    backward = snip["backward: loss"]
    return {
        "shape": shape,
        "model": describe(model),
        "batch_size": batch_size,
        "stages": result,
        "backward/forward": backward / max(forward, 1e-9),
        "floor afr/snip": (forward + 2 * backward) / max(forward + backward, 1e-9),
        "refer backward/loss backward": result["afr"]["backward: refer"]
        / max(result["afr"]["backward: loss"], 1e-9),
        "engine afr/snip": engine["afr"] / max(engine["snip"], 1e-9),
    }


PROFILE_ROWS = [  # (label, nested under the row above)
    ("forward", False),
    ("objectives (loss, SVD forward)", False),
    ("SVD forward", True),
    ("micro-batch feature pass", False),
    ("backward: loss", False),
    ("backward: refer", False),
    ("SVD backward", True),
    ("gradient accumulation (hooks)", True),
    ("other (batch prep, |g*w|, z-scores, setup)", False),
    ("z-score stage, measured apart", True),
    ("total", False),
]


def profile_markdown(result: dict) -> str:
    lines = [
        f"{result['shape']} ({result['model']}), batch {result['batch_size']}, one profiled call "
        "per criterion after a warm-up (ms inside each labelled stage: wall time on CPU, "
        "kernel time on CUDA).\n",
        "| stage | SNIP ms | ReFer ms | AFR ms | AFR % |",
        "|---|---:|---:|---:|---:|",
    ]
    afr_total = result["stages"]["afr"]["total"]
    for row, nested in PROFILE_ROWS:
        values = [result["stages"][m].get(row, 0.0) for m in METHODS]
        label = f"&nbsp;&nbsp;of which {row}" if nested else row
        lines.append(
            f"| {label} | {values[0]:.1f} | {values[1]:.1f} | {values[2]:.1f} "
            f"| {values[2] / max(afr_total, 1e-9):.1%} |"
        )
    for share in ("matmul share of CPU time", "attention share of CPU time"):
        values = [result["stages"][m][share] for m in METHODS]
        lines.append(f"| {share} | {values[0]:.0%} | {values[1]:.0%} | {values[2]:.0%} | |")
    lines.append(
        f"\nF = forward + objectives, B = backward (SNIP's): B / F = "
        f"{result['backward/forward']:.2f}. AFR's second (ReFer) backward / its first: "
        f"{result['refer backward/loss backward']:.2f}. Floor of AFR/SNIP with one shared "
        f"forward and one backward per objective, (F + 2B) / (F + B): "
        f"**{result['floor afr/snip']:.3f}**; AFR/SNIP over the labelled stages (the scoring "
        f"engine, z-score stage excluded): **{result['engine afr/snip']:.3f}**. *Other* is "
        "the rest of the call (batch preparation, |g*w|, z-scores, setup). *Z-score stage*: "
        "AFR's `sum_of_z_scores` (mean and std from one sum and norm per tensor, then "
        "z(a) + z(b) in three in-place passes), measured apart just after a real gradient "
        "pass (best of 2).\n"
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- 3. memory


def _memory_fn(mode: str, model, batch, rt: Runtime) -> Callable[[], Any]:
    batches = [batch]
    if mode == "train step":

        def step():
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()

        return step
    kwargs = {}
    if "micro-batch" in mode:
        kwargs["micro_batch_size"] = max(1, batch["pixel_values"].shape[0] // 4)
    if "checkpointing" in mode:
        kwargs["gradient_checkpointing"] = True
    if mode.startswith("afr gradients"):
        config = PrunerConfig(method="afr", num_batches=1, **kwargs)
        params = find_prunable_parameters(model, config)
        return lambda: gradients.accumulate_gradients(
            model, batches, params, config, ("loss", "refer")
        )
    return scorer(model, batches, mode.split(",")[0], **kwargs)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _profiled_peak(fn: Callable[[], Any]) -> tuple[int, int | None]:
    """(peak bytes allocated by tensors during `fn`, peak RSS growth during `fn`) on CPU."""
    from torch.profiler import ProfilerActivity, profile

    can_reset = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS") * 1024
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        peak_rss = _proc_status_kib("VmHWM") * 1024 if can_reset else None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    peak = max(
        (e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"),
        default=0,
    )
    return peak, None if peak_rss is None else peak_rss - rss_before


def memory_worker(spec: dict) -> dict:
    """Peak memory of one mode on a fresh model; run in its own process by `bench_memory`."""
    rt = Runtime(torch.device(spec["device"]), getattr(torch, spec["dtype"]))
    model = build_model(spec["shape"], rt)
    batch = make_batches(model, 1, spec["batch_size"], rt)[0]
    fn = _memory_fn(spec["mode"], model, batch, rt)
    tensors = list(model.parameters()) + list(model.buffers()) + list(batch.values())
    resident = sum(t.numel() * t.element_size() for t in tensors)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"total": peak, "growth": peak - before, "resident": before, "rss_growth": None}
    growth, rss_growth = _profiled_peak(fn)
    return {
        "total": resident + growth,
        "growth": growth,
        "resident": resident,
        "rss_growth": rss_growth,
    }


def _run_worker(spec: dict, subprocess_: bool) -> dict:
    if not subprocess_:
        return memory_worker(spec)
    command = [sys.executable, str(Path(__file__).resolve()), "--memory_worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(settings: Settings, rt: Runtime) -> dict:
    rows = []
    dtype = str(rt.dtype).removeprefix("torch.")
    for batch_size in settings.memory_batches:
        for mode in settings.memory_modes:
            spec = {
                "shape": settings.memory_shape,
                "batch_size": batch_size,
                "mode": mode,
                "device": str(rt.device),
                "dtype": dtype,
            }
            rows.append({**spec, **_run_worker(spec, settings.memory_subprocess)})
    return {
        "shape": settings.memory_shape,
        "model": describe_shape(settings.memory_shape),
        "rows": rows,
    }


def memory_markdown(result: dict) -> str:
    mb = 2**20
    lines = [
        f"{result['shape']} ({result['model']}); each row in a fresh process.\n",
        "| batch | mode | peak MiB | vs train step | growth MiB | growth vs train step "
        "| peak RSS growth MiB | RSS growth vs train step |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts: dict[str, list[tuple[int, float]]] = {}
    train = {r["batch_size"]: r for r in result["rows"] if r["mode"] == "train step"}
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['batch_size']} | {r['mode']} | failed: {r['error']} ||||||")
            continue
        t = train.get(r["batch_size"])
        rel = r["total"] / t["total"] if t and "total" in t else float("nan")
        rel_growth = r["growth"] / t["growth"] if t and "growth" in t else float("nan")
        rss = r.get("rss_growth")
        t_rss = t.get("rss_growth") if t else None
        rss_cell = f"{rss / mb:.0f}" if rss else "n/a"
        rss_rel = f"{rss / t_rss:.2f}" if rss and t_rss else "n/a"
        lines.append(
            f"| {r['batch_size']} | {r['mode']} | {r['total'] / mb:.0f} | {rel:.2f} "
            f"| {r['growth'] / mb:.0f} | {rel_growth:.2f} | {rss_cell} | {rss_rel} |"
        )
        if r["mode"].startswith("afr,") or r["mode"] == "afr":
            verdicts.setdefault(r["mode"], []).append((r["batch_size"], rel))
    note = (
        "\n*Peak*: bytes held by tensors at the peak (weights, batch and everything else alive "
        "counted once; CPU: from the profiler's allocation events, GPU: "
        "`torch.cuda.max_memory_allocated`). *Growth*: the peak minus what was allocated before "
        "the call. *Peak RSS growth*: the process's peak resident set (VmHWM, reset before the "
        "call) minus its RSS before (allocator caching, fragmentation and the profiler's own "
        "buffers included). *train step*: forward, backward and a first AdamW step (its states "
        "created). *micro-batch*: `micro_batch_size` = batch / 4; *checkpointing*: "
        "`gradient_checkpointing=True`; *afr gradients*: `accumulate_gradients` alone (the "
        "scoring engine, without the |g*w| and z-score stage, which works in place on the "
        "gradient buffers).\n"
    )
    summary = [
        f"- {mode}: peak / train-step peak "
        + ", ".join(f"{rel:.2f} (batch {b})" for b, rel in pairs)
        + f"; worst {verdict(max(rel for _, rel in pairs), TARGETS['memory'])}."
        for mode, pairs in verdicts.items()
    ]
    return "\n".join(lines) + "\n" + note + "\n" + "\n".join(summary) + "\n"


# --------------------------------------------------------------------------- 4. mask upkeep


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, image_size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, image_size, image_size, generator=generator)
        self.y = torch.randint(0, NUM_LABELS, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class _StepTimer(TrainerCallback):
    """Wall time from `on_step_begin` to `on_step_end` (forward, backward, optimizer step)."""

    def __init__(self, rt: Runtime):
        self.rt, self.times, self._start = rt, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.rt.sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.rt.sync()
        self.times.append(time.perf_counter() - self._start)


def _random_masks(model, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    params = find_prunable_parameters(model, PrunerConfig())
    generator = torch.Generator().manual_seed(seed)
    return {
        n: (torch.rand(p.shape, generator=generator) >= sparsity).to(p.device)
        for n, p in params.items()
    }


def _trainer(model, dataset, batch_size, steps, rt, callbacks, workdir) -> Trainer:
    args = TrainingArguments(
        output_dir=workdir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=rt.device.type == "cpu",
        bf16=rt.dtype == torch.bfloat16,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no end-of-training metrics on stdout
    return trainer


def _gradient_hooks_seconds(model, enforcer: MaskEnforcer, rt: Runtime, rounds: int = 5) -> float:
    """Extra time of a backward pass through the masked weights with the hooks attached.

    Each masked weight gets its gradient from a one-row `F.linear` (a Conv2d weight flattened
    to 2-D), at almost no compute. The hook then sees what a real backward hands it: a fresh
    contiguous gradient buffer, which it masks in place and which becomes `.grad` without a
    copy. `.grad` is reset to None after every pass, so every pass masks a fresh gradient and
    neither variant accumulates into an existing `.grad`; the difference with and without
    `enforcer.attach()` is the hooks' own work. A last hooked pass checks that the hooks did
    mask the gradients.
    """
    params = {name: p for name, p in model.named_parameters() if name in enforcer.masks}

    def output(p):
        w = p if p.ndim == 2 else p.flatten(1)
        return torch.nn.functional.linear(torch.ones(1, w.shape[1], device=p.device), w).sum()

    def backward():
        torch.autograd.backward([output(p) for p in params.values()])
        for p in params.values():
            p.grad = None

    samples = {"plain": [], "hooked": []}
    for _ in range(rounds):
        for name in ("plain", "hooked"):
            if name == "hooked":
                enforcer.attach()
            samples[name].append(_best_time(backward, 1, rt))
            enforcer.detach()
    enforcer.attach()
    torch.autograd.backward([output(p) for p in params.values()])
    enforcer.detach()
    for name, p in params.items():
        pruned = ~enforcer.masks[name].to(device=p.device, dtype=torch.bool)
        if torch.count_nonzero(p.grad[pruned]):
            raise RuntimeError(f"The gradient hook left nonzero gradients at pruned {name}.")
        p.grad = None
    return max(0.0, min(samples["hooked"]) - min(samples["plain"]))


def bench_upkeep_one(shape, batch_size, steps, rounds, rt: Runtime, workdir: str) -> dict:
    # Two identical models (same initial weights, masks applied to both): one enforced.
    fp32 = Runtime(rt.device, torch.float32)  # the Trainer handles bf16 through autocast
    models = {name: build_model(shape, fp32) for name in ("plain", "enforced")}
    masks = _random_masks(models["plain"], sparsity=0.9)
    for model in models.values():
        apply_masks(find_prunable_parameters(model, PrunerConfig()), masks)
    dataset = _Images(batch_size * (steps + 1), models["plain"].config.image_size)
    timers = {name: _StepTimer(rt) for name in models}
    trainers = {
        name: _trainer(
            models[name],
            dataset,
            batch_size,
            steps + 1,
            rt,
            [timers[name]] + ([PruningMaskCallback(masks)] if name == "enforced" else []),
            os.path.join(workdir, name),
        )
        for name in models
    }
    per_round = {name: [] for name in models}
    for r in range(rounds):
        order = ["plain", "enforced"] if r % 2 == 0 else ["enforced", "plain"]
        for name in order:
            timers[name].times.clear()
            trainers[name].train()
            per_round[name].append(statistics.median(timers[name].times[1:]))  # first: warm-up
    ratios = [e / p for e, p in zip(per_round["enforced"], per_round["plain"])]
    # Direct cost of the added work, on the enforced model and its optimizer state.
    model, optimizer = models["enforced"], trainers["enforced"].optimizer
    enforcer = MaskEnforcer(model, masks)
    direct = {
        "post-step zeroing (weights)": _best_time(
            lambda: enforcer._after_step(optimizer, (), {}), 5, rt
        ),
        "gradient hooks": _gradient_hooks_seconds(model, enforcer, rt),
    }
    violations = enforcer.violations(optimizer)
    return {
        "shape": shape,
        "model": describe(models["plain"]),
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "plain": per_round["plain"],
        "enforced": per_round["enforced"],
        "overhead": statistics.median(ratios) - 1,
        "overhead_range": (min(ratios) - 1, max(ratios) - 1),
        "direct": direct,
        "step": statistics.median(per_round["plain"]),
        "violations": len(violations),
    }


def bench_upkeep(settings: Settings, rt: Runtime) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        rows = [
            bench_upkeep_one(shape, b, steps, rounds, rt, workdir)
            for shape, b, steps, rounds in settings.upkeep
        ]
    return {"rows": rows}


def upkeep_markdown(result: dict) -> str:
    lines = [
        "| model | batch | steps x rounds | step s (plain) | step s (enforced) | overhead "
        "| target <= 3% | post-step zeroing ms | gradient hooks ms | direct cost / step "
        "| pruned nonzeros after |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        direct = sum(r["direct"].values())
        low, high = r["overhead_range"]
        lines.append(
            f"| {r['shape']} ({r['model']}) | {r['batch_size']} | {r['steps']} x {r['rounds']} "
            f"| {statistics.median(r['plain']):.4f} | {statistics.median(r['enforced']):.4f} "
            f"| **{r['overhead']:+.1%}** ({low:+.1%} to {high:+.1%}) "
            f"| {verdict(1 + r['overhead'], 1 + MASK_TARGET).split(' (')[0]} "
            f"| {1e3 * r['direct']['post-step zeroing (weights)']:.2f} "
            f"| {1e3 * r['direct']['gradient hooks']:.2f} | {direct / r['step']:.1%} "
            f"| {r['violations']} |"
        )
    note = (
        "\nTwo `Trainer`s on identical 90%-pruned models, one with `PruningMaskCallback`, "
        "trained in alternating rounds; a step is `on_step_begin` to `on_step_end` (forward, "
        "backward, clipping, AdamW step, zero_grad; data loading excluded), the first step of "
        "each round (optimizer set-up) dropped. Overhead: median of the per-round ratios of "
        "median step times, minus 1 (range in brackets). *Direct cost*: the enforcement work "
        "alone, divided by the plain step (the overhead without the timing noise): the "
        "optimizer post-step hook (`MaskEnforcer._after_step`: each masked weight multiplied "
        "in place by its mask; the optimizer state needs no per-step work, as masked gradients "
        "keep it zero; best of 5) and the gradient hooks (each masks the fresh weight gradient "
        "in place; timed as a backward that only hands the masked weights their gradients, "
        "with the hooks attached minus without, best of 5 each).\n"
    )
    return "\n".join(lines) + "\n" + note


# --------------------------------------------------------------------------- 5. scaling


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "slope": slope,
        "intercept": intercept,
        "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
        "max_rel_residual": max(
            abs(y - intercept - slope * x) / y for x, y in zip(xs, ys) if y > 0
        ),
    }


def _best_time(fn: Callable[[], Any], repeats: int, rt: Runtime) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        rt.sync()
        start = time.perf_counter()
        fn()
        rt.sync()
        samples.append(time.perf_counter() - start)
    return min(samples)


def bench_scaling(settings: Settings, rt: Runtime) -> dict:
    series = {}
    model = build_model(settings.scaling_shape, rt)
    points = []
    for n_batches in settings.scaling_batches:
        batches = make_batches(model, n_batches, settings.scaling_batch, rt)
        for method in ("snip", "afr"):
            seconds = _best_time(scorer(model, batches, method), settings.scaling_repeats, rt)
            points.append({"x": n_batches * settings.scaling_batch, "method": method, "s": seconds})
    series["samples"] = {"label": f"scoring samples ({settings.scaling_shape})", "points": points}
    base = shape_kwargs(settings.scaling_shape)
    for key, values in (
        ("depth", settings.scaling_depths),
        ("width", settings.scaling_widths),
    ):
        points = []
        for value in values:
            if key == "depth":
                shape = {**base, "num_hidden_layers": value}
            else:
                head_dim = base["hidden_size"] // base["num_attention_heads"]
                shape = {
                    **base,
                    "hidden_size": value,
                    "num_attention_heads": max(1, value // head_dim),
                    "intermediate_size": 4 * value,
                }
            model = build_model(shape, rt)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            batches = make_batches(model, 1, settings.scaling_batch, rt)
            for method in ("snip", "afr"):
                seconds = _best_time(scorer(model, batches, method), settings.scaling_repeats, rt)
                points.append({"x": params, "method": method, "s": seconds, key: value})
        if points:
            label = f"parameters, M (varying {key}, batch {settings.scaling_batch})"
            series[key] = {"label": label, "points": points}
    for s in series.values():
        s["fits"] = {}
        for method in ("snip", "afr"):
            pts = [p for p in s["points"] if p["method"] == method]
            if len(pts) >= 2:
                s["fits"][method] = linear_fit([p["x"] for p in pts], [p["s"] for p in pts])
    return {"series": series, "batch_size": settings.scaling_batch}


def scaling_markdown(result: dict) -> str:
    out = []
    for name, s in result["series"].items():
        xs = sorted({p["x"] for p in s["points"]})
        by = {(p["method"], p["x"]): p["s"] for p in s["points"]}
        extra = {p["x"]: p.get(name) for p in s["points"]}
        head = "| x | " + ("layers / hidden | " if name != "samples" else "")
        out.append(f"Series: {s['label']}\n")
        out.append(head + "SNIP s | AFR s | AFR/SNIP | AFR s per unit x |")
        out.append("|---:|" + ("---:|" if name != "samples" else "") + "---:|---:|---:|---:|")
        for x in xs:
            snip, afr = by.get(("snip", x), float("nan")), by.get(("afr", x), float("nan"))
            cell = f"{extra[x]} | " if name != "samples" else ""
            out.append(
                f"| {x:.3g} | {cell}{snip:.3f} | {afr:.3f} | {afr / snip:.2f} | {afr / x:.4f} |"
            )
        fits = "; ".join(
            f"{m}: t = {f['intercept']:.3f} + {f['slope']:.4f} x, R^2 = {f['r2']:.4f}, "
            f"max residual {f['max_rel_residual']:.1%}"
            for m, f in s["fits"].items()
        )
        out.append(f"\nLeast-squares line fits: {fits}.\n")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- 6. checkpoints


def _checkpoint_module():
    path = HERE / "checkpoint_size.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("hf_afr_checkpoint_size", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module if hasattr(module, "measure") else None


def bench_checkpoints(settings: Settings, rt: Runtime) -> dict:
    module = _checkpoint_module()
    if module is None:
        return {"missing": "benchmarks/checkpoint_size.py (with `measure`) is not present"}
    shape = settings.checkpoint_shape
    if shape is not None:  # a smaller stand-in for quick runs and tests
        module.vit_b16 = lambda: build_model(shape, Runtime(torch.device("cpu"), torch.float32))
    with tempfile.TemporaryDirectory() as workdir:
        rows = [module.measure(s, 1, workdir) for s in settings.checkpoint_sparsities]
    return {"shape": shape or "ViT-B/16", "rows": rows}


def checkpoints_markdown(result: dict) -> str:
    if "missing" in result:
        return f"Not measured: {result['missing']}.\n"
    mb = 1e6
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
            f"| {r['sparsity']:.0%} | {r['dense'] / mb:.1f} | {r['compact'] / mb:.1f} "
            f"| {r['compact'] / r['dense']:.1%} | {r['bound'] / mb:.1f} | {over:.3f} "
            f"| {verdict(over, 1.10).split(' (')[0]} | {r['save']['dense']:.2f} "
            f"| {r['save']['compact']:.2f} | {r['load']['dense']:.2f} "
            f"| {r['load']['compact']:.2f} | {r['load']['compact'] / r['load']['dense']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- GPU suite


def bench_gpu_scoring(settings: Settings, rt: Runtime) -> dict:
    """Throughput and peak memory of SNIP/ReFer/AFR (and a train step) per dtype and batch.

    Meant for a GPU (`torch.cuda.max_memory_allocated`); on CPU the profiler's peak is used,
    so the same code path runs in the unit test.
    """
    rows = []
    cuda = rt.device.type == "cuda"
    for dtype in (torch.float32, torch.bfloat16):
        drt = Runtime(rt.device, dtype)
        for batch_size in settings.memory_batches:
            model = build_model(settings.memory_shape, drt)
            batch = make_batches(model, 1, batch_size, drt)[0]
            tensors = list(model.parameters()) + list(model.buffers()) + list(batch.values())
            resident = sum(t.numel() * t.element_size() for t in tensors)
            for mode in settings.memory_modes:
                row = {"dtype": str(dtype).removeprefix("torch."), "batch_size": batch_size}
                try:
                    fn = _memory_fn(mode, model, batch, drt)
                    fn()
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    seconds = _best_time(fn, 3, drt)
                    peak = (
                        torch.cuda.max_memory_allocated()
                        if cuda
                        else resident + _profiled_peak(fn)[0]
                    )
                    row.update(
                        mode=mode, seconds=seconds, images_per_s=batch_size / seconds, peak=peak
                    )
                except torch.cuda.OutOfMemoryError:
                    row.update(mode=mode, error="out of memory")
                rows.append(row)
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            del model, batch, tensors
    card = torch.cuda.get_device_name(rt.device) if cuda else platform.processor() or "CPU"
    return {"shape": settings.memory_shape, "rows": rows, "card": card}


def gpu_scoring_markdown(result: dict) -> str:
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


# --------------------------------------------------------------------------- driver

SECTIONS: dict[str, tuple[str, Callable, Callable]] = {
    "timing": ("1. Scoring time, side by side", bench_timing, timing_markdown),
    "gpu_scoring": (
        "1. Scoring throughput and peak memory (GPU)",
        bench_gpu_scoring,
        gpu_scoring_markdown,
    ),
    "profile": ("2. Where the scoring time goes", bench_profile, profile_markdown),
    "memory": ("3. Peak memory: scoring vs one training step", bench_memory, memory_markdown),
    "upkeep": ("4. Mask upkeep during fine-tuning", bench_upkeep, upkeep_markdown),
    "scaling": ("5. Scaling of the scoring time", bench_scaling, scaling_markdown),
    "checkpoints": ("6. Checkpoints: dense vs compact", bench_checkpoints, checkpoints_markdown),
}


def environment(rt: Runtime, settings: Settings, command: str) -> dict:
    env = {
        "command": command,
        "settings": settings.name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(rt.device),
        "dtype": str(rt.dtype).removeprefix("torch."),
        "load_average_start": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if rt.device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(rt.device)
    return env


def run(settings: Settings, rt: Runtime, command: str = "", log=print) -> tuple[str, dict]:
    """Run every section of `settings`; returns (markdown, JSON-ready results)."""
    start = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(rt, settings, command)}
    parts = []
    for key in settings.sections:
        title, bench, to_markdown = SECTIONS[key]
        t0 = time.perf_counter()
        log(f"[perf] {title} ...", file=sys.stderr, flush=True)
        load_start = load_average()
        results[key] = bench(settings, rt)
        results[key]["wall_s"] = time.perf_counter() - t0
        results[key]["load_average"] = [load_start, load_average()]
        parts.append(
            f"## {title}\n\n{to_markdown(results[key])}\n_Section wall time "
            f"{results[key]['wall_s']:.0f} s; load average (1/5/15 min) {load_start} at its start, "
            f"{results[key]['load_average'][1]} at its end._\n"
        )
        log(parts[-1], flush=True)
    env = results["environment"]
    env["load_average_end"] = load_average()
    env["wall_s"] = time.perf_counter() - start
    head = (
        f"# hf_afr performance ({settings.name} run)\n\n"
        f"`{env['command']}`; {env['date']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, Python {env['python']}, {env['machine']}, {env['cpus']} CPUs, "
        f"{env['torch_threads']} torch threads, device {env['device']}"
        + (f" ({env['card']})" if "card" in env else "")
        + f", dtype {env['dtype']}. Load average (1/5/15 min) at start {env['load_average_start']}, "
        f"at end {env['load_average_end']}. Wall time {env['wall_s'] / 60:.1f} min.\n"
    )
    return head + "\n" + "\n".join(parts), results


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def write_outputs(markdown: str, results: dict, output: str) -> None:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    path.with_suffix(".json").write_text(
        json.dumps(_json_ready(results), indent=2, sort_keys=True) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run on small shapes.")
    parser.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if present), 'cpu', 'cuda'.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a machine shared with other jobs, "
        "1 thread avoids the stalls of OpenMP threads waiting for a descheduled sibling.",
    )
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=None)
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file to write (JSON beside it). Default: benchmarks/results/perf.md for "
        "a full CPU run, perf-gpu.md for the GPU suite, nothing for --quick.",
    )
    parser.add_argument("--memory_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rt = Runtime(torch.device(device), getattr(torch, args.dtype))
    settings = GPU if args.suite == "gpu" else QUICK if args.quick else FULL
    if args.sections:
        settings = dataclasses.replace(settings, sections=tuple(args.sections))
    output = args.output
    if output is None and not args.quick:
        output = str(HERE / "results" / ("perf-gpu.md" if args.suite == "gpu" else "perf.md"))
    command = "python benchmarks/perf.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    markdown, results = run(settings, rt, command.strip())
    if output:
        write_outputs(markdown, results, output)
        print(f"[perf] wrote {output} and {Path(output).with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
