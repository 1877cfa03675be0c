"""Section 2: where the scoring time goes, from `torch.profiler` over the public criteria.

Each criterion runs once under the profiler through `hf_afr.get_criterion(method).score`; the
stages are the `record_function` ranges the library labels (`hf_afr::forward`,
`hf_afr::objectives`, `hf_afr::feature_grads`, `hf_afr::backward[loss]`,
`hf_afr::backward[refer]`, `hf_afr::accumulate`) plus a few aten ops (SVD, matmuls).

AFR's z-score stage is timed apart with the public `hf_afr.criteria.sum_of_z_scores` on the
SNIP and ReFer scores of a real call (exactly the inputs AFR combines).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile, record_function

from .common import METHODS, Runtime, build_model, describe, make_batches, scorer, timed

STAGES = [
    ("forward", "hf_afr::forward"),
    ("objectives (loss, SVD forward)", "hf_afr::objectives"),
    ("micro-batch feature pass", "hf_afr::feature_grads"),
    ("backward: loss", "hf_afr::backward[loss]"),
    ("backward: refer", "hf_afr::backward[refer]"),
]
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")
# The labelled stages each criterion must show (a missing label means the library's
# profiler labels changed, and the table would silently read zeros).
EXPECTED = {
    "snip": ("forward", "backward: loss"),
    "refer": ("forward", "backward: refer"),
    "afr": ("forward", "backward: loss", "backward: refer"),
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


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    shape: str
    batch_size: int


PRESETS = {
    "full": ProfileSettings("ViT-S/16-6L", 8),
    "quick": ProfileSettings("ViT-S/16-6L", 2),
    "toy": ProfileSettings("toy", 4),
    "gpu": ProfileSettings("ViT-B/16", 64),
}


def profile_method(fn: Callable[[], Any], rt: Runtime) -> dict[str, float]:
    """Milliseconds per labelled stage of one call of `fn` (after a warm-up call)."""
    fn()
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
    cpu_total = max(sum(self_times.values()), 1e-9)
    out["matmul share of CPU time"] = sum(self_times.get(k, 0.0) for k in MATMUL_OPS) / cpu_total
    out["attention share of CPU time"] = (
        sum(v for k, v in self_times.items() if "scaled_dot_product" in k) / cpu_total
    )
    return out


def z_score_seconds(model, batches, rt: Runtime, repeats: int = 2) -> float:
    """Time of AFR's z-score stage alone, best of `repeats`.

    Its inputs are the SNIP and ReFer scores (|dL/dw * w| and |dR/dw * w|) of a real
    scoring call, fresh each repeat since the stage works in place on its first argument.
    """
    from hf_afr.criteria import sum_of_z_scores

    snip, refer = scorer(model, batches, "snip"), scorer(model, batches, "refer")
    samples = []
    for _ in range(repeats):
        a, b = snip(), refer()
        samples.append(timed(lambda a=a, b=b: sum_of_z_scores(a, b), rt))
        del a, b
    return min(samples)


def _check_stages(stages: dict[str, dict[str, float]]) -> None:
    for method, labels in EXPECTED.items():
        empty = [label for label in labels if not stages[method][label] > 0]
        if empty or not stages[method]["total"] > 0:
            raise RuntimeError(
                f"The profile of {method!r} has no time in {empty or ['total']}: the library's "
                "`record_function` labels (hf_afr::forward, hf_afr::backward[...]) were not "
                "found; update STAGES in benchmarks/perf_suite/profile.py."
            )


def run(settings: ProfileSettings, rt: Runtime) -> dict:
    model = build_model(settings.shape, rt)
    batches = make_batches(model, 1, settings.batch_size, rt)
    stages = {m: profile_method(scorer(model, batches, m), rt) for m in METHODS}
    _check_stages(stages)
    stages["afr"]["z-score stage, measured apart"] = 1e3 * z_score_seconds(model, batches, rt)
    engine = {m: sum(stages[m][label] for label, _ in STAGES) for m in METHODS}
    snip = stages["snip"]
    forward = snip["forward"] + snip["objectives (loss, SVD forward)"]
    backward = snip["backward: loss"]
    return {
        "shape": settings.shape,
        "model": describe(model),
        "batch_size": settings.batch_size,
        "stages": stages,
        "backward/forward": backward / forward,
        "floor afr/snip": (forward + 2 * backward) / (forward + backward),
        "refer backward/loss backward": stages["afr"]["backward: refer"]
        / stages["afr"]["backward: loss"],
        "engine afr/snip": engine["afr"] / engine["snip"],
    }


def markdown(result: dict) -> str:
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
            f"| {values[2] / afr_total:.1%} |"
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
        "z(a) + z(b) in three in-place passes), measured apart on the scores of a real SNIP "
        "and ReFer call (best of 2).\n"
    )
    return "\n".join(lines) + "\n"
