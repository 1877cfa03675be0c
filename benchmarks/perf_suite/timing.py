"""Section 1: scoring time of SNIP, ReFer and AFR on the same batches, side by side.

The criteria run end to end through the public `hf_afr.get_criterion(method).score`, in
interleaved rounds. A fourth variant, `afr_batched_vjp`, is AFR written directly in torch
with both gradients from one batched backward (`is_grads_batched=True`): the library does not
use it, it is kept to re-measure the idea (and, being written independently, it doubles as a
check of the library's AFR scores in the tests).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_afr import PrunerConfig, find_prunable_parameters

from .common import (
    METHODS,
    TARGETS,
    Runtime,
    build_model,
    describe,
    interleaved,
    make_batches,
    ratio,
    require_finite,
    scorer,
    verdict,
)


@dataclasses.dataclass(frozen=True)
class TimingSettings:
    # (shape, batch size, scoring batches, rounds) per table row
    runs: tuple[tuple[str, int, int, int], ...]


PRESETS = {
    "full": TimingSettings(
        runs=(("ViT-S/16-6L", 8, 1, 7), ("ViT-S/16-6L", 8, 4, 3), ("ViT-B/16", 4, 1, 5))
    ),
    "quick": TimingSettings(runs=(("ViT-S/16-6L", 2, 1, 2),)),
    "toy": TimingSettings(runs=(("toy", 4, 2, 1),)),
}


def afr_batched_vjp(model, batches) -> Callable[[], dict[str, torch.Tensor]]:
    """AFR with the default `PrunerConfig`, in plain torch, both gradients from one backward.

    Forward with hidden states; the loss is the mean cross-entropy, the ReFer objective the sum
    over encoder layers of the mean singular value of the CLS features; one
    `torch.autograd.grad(..., is_grads_batched=True)` gives both gradients; then |g * w| and
    z(loss scores) + z(ReFer scores) with the mean and population std over all scored weights.
    """
    params = find_prunable_parameters(model, PrunerConfig(method="afr"))
    names, weights = list(params), list(params.values())

    def gradient_sums() -> list[list[torch.Tensor]]:
        sums = None
        for batch in batches:
            out = model(pixel_values=batch["pixel_values"], output_hidden_states=True)
            loss = F.cross_entropy(out.logits.float(), batch["labels"])
            features = [h[:, 0, :].float() for h in out.hidden_states[1:]]
            refer = sum(torch.linalg.svdvals(f).sum() / f.shape[0] for f in features)
            eye = torch.eye(2, device=loss.device, dtype=loss.dtype)
            grads = torch.autograd.grad(
                torch.stack([loss, refer]), weights, grad_outputs=eye, is_grads_batched=True
            )
            grads = [g.float() for g in grads]
            sums = grads if sums is None else [s.add_(g) for s, g in zip(sums, grads)]
        return [[g[k] for g in sums] for k in range(2)]

    def z_scores(scores: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([s.flatten() for s in scores]).double()
        std, mean = torch.std_mean(flat, correction=0)
        return [(s.double() - mean).div_(std).float() for s in scores]

    def run() -> dict[str, torch.Tensor]:
        requires_grad = {p: p.requires_grad for p in model.parameters()}
        scored = {id(w) for w in weights}
        try:
            for p in model.parameters():
                p.requires_grad_(id(p) in scored)
            per_objective = gradient_sums()
        finally:
            for p, flag in requires_grad.items():
                p.requires_grad_(flag)
        a, b = (
            z_scores([(g * w.detach().float()).abs_() for g, w in zip(grads, weights)])
            for grads in per_objective
        )
        return {name: x.add_(y) for name, x, y in zip(names, a, b)}

    return run


def run(settings: TimingSettings, rt: Runtime) -> dict:
    rows = []
    for shape, batch_size, n_batches, rounds in settings.runs:
        model = build_model(shape, rt)
        batches = make_batches(model, n_batches, batch_size, rt)
        fns = {m: scorer(model, batches, m) for m in METHODS}
        fns["afr, batched VJP"] = afr_batched_vjp(model, batches)
        times = interleaved(fns, rounds, rt)
        row = {
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
        require_finite(
            [t for ts in times.values() for t in ts]
            + [row[k]["median"] for k in ("refer/snip", "afr/snip", "afr batched/snip")],
            f"scoring time of {shape}",
        )
        rows.append(row)
        del model, batches, fns
    return {"rows": rows}


def markdown(result: dict) -> str:
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
        stretch = "reached" if ra["median"] < TARGETS["afr/snip stretch"] else "not reached"
        verdicts.append(
            f"- {row['shape']}, {row['batch_size']} x {row['num_batches']}: ReFer/SNIP "
            f"{verdict(rs['median'], TARGETS['refer/snip'])}; AFR/SNIP "
            f"{verdict(ra['median'], TARGETS['afr/snip'])}; stretch goal AFR/SNIP < 1.5: "
            f"{stretch}."
        )
    note = (
        "\nTimes: medians over the rounds of one scoring call on `batches` batches of `batch` "
        "images (the registered criterion end to end, z-scores included; the library's default "
        "is `num_batches=4`, and the z-score stage is paid once per call). Ratios: median of the "
        "per-round ratios (range in brackets). *Batched VJP*: AFR written directly in torch, "
        "its two gradients from one `torch.autograd.grad(..., is_grads_batched=True)` backward "
        "instead of two backward passes (not used by the library; plain-torch |g*w| and "
        "z-scores, whose cost is small beside the passes). *Separately*: SNIP and ReFer each "
        "with its own forward pass (the sum of their times).\n"
    )
    return "\n".join(lines) + "\n" + note + "\n" + "\n".join(verdicts) + "\n"
