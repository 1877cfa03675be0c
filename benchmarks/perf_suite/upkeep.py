"""Section 4: the cost of keeping pruned weights at zero while fine-tuning.

Two `Trainer`s on identical 90%-pruned models, one with the public `PruningMaskCallback`,
trained in alternating rounds (target: <= 3% slower per step). The direct cost of the added
work is measured through the public `MaskEnforcer` too: a real AdamW step with the enforcer's
post-step hook against the same step without it, and a backward pass with its gradient hooks
against one without.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from hf_afr import (
    MaskEnforcer,
    PrunerConfig,
    PruningMaskCallback,
    apply_masks,
    find_prunable_parameters,
)

from .common import (
    NUM_LABELS,
    TARGETS,
    Runtime,
    best_time,
    build_model,
    describe,
    interleaved,
    require_finite,
    verdict,
)


@dataclasses.dataclass(frozen=True)
class UpkeepSettings:
    # (shape, batch size, steps per round, rounds) per table row
    runs: tuple[tuple[str, int, int, int], ...]
    sparsity: float = 0.9
    direct_rounds: int = 5


PRESETS = {
    "full": UpkeepSettings(runs=(("default", 32, 20, 5), ("ViT-B/16", 2, 5, 5))),
    "quick": UpkeepSettings(runs=(("default", 16, 5, 2),)),
    "toy": UpkeepSettings(runs=(("toy", 4, 2, 1),), direct_rounds=2),
    "gpu": UpkeepSettings(runs=(("ViT-B/16", 64, 15, 2),)),
}


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


def post_step_seconds(model, enforcer: MaskEnforcer, rt: Runtime, rounds: int) -> float:
    """Extra time of an AdamW step with the enforcer's post-step hook over the same step without.

    Two AdamW optimizers over the model's weights, the enforcer attached to one, step in
    interleaved rounds on the same gradients; the difference of their best times is the hook's
    cost. The gradients are random and *not* masked, so the check that follows can fail: after
    the hooked step no pruned weight may be nonzero.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
    plain = torch.optim.AdamW(params, lr=1e-4)
    hooked = torch.optim.AdamW(params, lr=1e-4)
    enforcer.attach(hooked)
    try:
        times = interleaved({"plain": plain.step, "hooked": hooked.step}, rounds, rt)
        plain.step()
        hooked.step()
        found = enforcer.violations()
    finally:
        enforcer.detach()
        for p in params:
            p.grad = None
    if found:
        raise RuntimeError(f"The post-step hook left pruned weights nonzero: {found}.")
    return max(0.0, min(times["hooked"]) - min(times["plain"]))


def gradient_hooks_seconds(model, enforcer: MaskEnforcer, rt: Runtime, rounds: int) -> float:
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
            samples[name].append(best_time(backward, 1, rt))
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


def run_one(shape, batch_size, steps, rounds, settings: UpkeepSettings, rt: Runtime, workdir):
    """One table row: Trainer steps with and without the callback, then the direct costs."""
    # Two identical models (same initial weights, masks applied to both): one enforced.
    fp32 = Runtime(rt.device, torch.float32)  # the Trainer handles bf16 through autocast
    models = {name: build_model(shape, fp32) for name in ("plain", "enforced")}
    masks = _random_masks(models["plain"], settings.sparsity)
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
        for name in ["plain", "enforced"] if r % 2 == 0 else ["enforced", "plain"]:
            timers[name].times.clear()
            trainers[name].train()
            per_round[name].append(statistics.median(timers[name].times[1:]))  # first: warm-up
    ratios = [e / p for e, p in zip(per_round["enforced"], per_round["plain"])]
    model = models["enforced"]
    enforcer = MaskEnforcer(model, masks)
    violations = enforcer.violations(trainers["enforced"].optimizer)
    direct = {
        "post-step zeroing (weights)": post_step_seconds(
            model, enforcer, rt, settings.direct_rounds
        ),
        "gradient hooks": gradient_hooks_seconds(model, enforcer, rt, settings.direct_rounds),
    }
    require_finite(per_round["plain"] + per_round["enforced"], f"mask upkeep of {shape}")
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


def run(settings: UpkeepSettings, rt: Runtime) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        rows = [
            run_one(shape, b, steps, rounds, settings, rt, workdir)
            for shape, b, steps, rounds in settings.runs
        ]
    return {"rows": rows}


def markdown(result: dict) -> str:
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
            f"| {verdict(1 + r['overhead'], TARGETS['mask upkeep']).split(' (')[0]} "
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
        "optimizer post-step hook (each masked weight multiplied in place by its mask; the "
        "optimizer state needs no per-step work, as masked gradients keep it zero; timed as an "
        "AdamW step with `MaskEnforcer.attach(optimizer)` minus the same step of a second "
        "AdamW without it, best of the interleaved rounds) and the gradient hooks (each masks "
        "the fresh weight gradient in place; timed as a backward that only hands the masked "
        "weights their gradients, with the hooks attached minus without, best of the rounds "
        "each). *Pruned nonzeros after*: `MaskEnforcer.violations` of the enforced model and its "
        "`Trainer` optimizer after training.\n"
    )
    return "\n".join(lines) + "\n" + note
