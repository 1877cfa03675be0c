"""Dense teacher -> prune -> fine-tune with vs without distillation, on the embedded typefaces.

The recipe of docs/distillation.md, measured: for every seed,

1. the teacher: the embedded tiny ViT (`hf_afr.DEFAULT_MODEL`) fine-tuned dense on the task;
2. the students: the same pretrained model pruned with AFR before fine-tuning (unstructured
   90%/95% with masks kept by `PruningMaskCallback`; structured heads+MLP 50%/70%, a smaller
   dense model), each fine-tuned twice with the same seed, data order and schedule: with the
   plain `transformers.Trainer` and with `hf_afr.DistillationTrainer` distilling the teacher.

Every run uses the public API (`AFRPruner`, `PruningMaskCallback`, `DistillationTrainer`) on
in-memory tensors (normalised as the model's processor does), so no image is decoded per step.
Finished runs are appended to `<output>.partial.jsonl`; `--resume` keeps them and runs the
rest (teachers are saved under `--work_dir` and reloaded).

    python benchmarks/distillation_recipe.py --resume        # about 50 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_afr import (
    DEFAULT_MODEL,
    AFRPruner,
    DistillationTrainer,
    PrunerConfig,
    PruningMaskCallback,
)
from hf_afr.data import typeface_arrays, typeface_class_names

SETTINGS = (  # (label, structure, sparsity), in the order they run
    ("unstructured 95%", None, 0.95),
    ("structured heads+mlp 70%", "heads+mlp", 0.7),
    ("unstructured 90%", None, 0.9),
    ("structured heads+mlp 50%", "heads+mlp", 0.5),
)


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def load_typefaces() -> dict:
    def tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    xtr, ytr = typeface_arrays("train", samples_per_class=60, seed=1)
    xte, yte = typeface_arrays("test", samples_per_class=20, seed=2)
    return {
        "train": TensorDataset(tensor(xtr), torch.from_numpy(ytr).long()),
        "test": TensorDataset(tensor(xte), torch.from_numpy(yte).long()),
        "id2label": dict(enumerate(typeface_class_names())),
    }


def training_args(args, seed: int, folder: Path):
    from transformers import TrainingArguments

    return TrainingArguments(
        str(folder), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256, learning_rate=args.lr, weight_decay=0.05,
        lr_scheduler_type="cosine", warmup_steps=0.1, max_grad_norm=1.0, seed=seed,
        data_seed=seed, save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip


def accuracy(model, dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [model(pixel_values=dataset.x[i : i + 256]).logits for i in range(0, len(dataset), 256)]
        )
    return float((logits.argmax(-1) == dataset.y).float().mean())


def teacher_model(args, data, seed: int, results: dict):
    """The dense fine-tuned teacher of this seed (trained once, saved, reloaded on resume)."""
    from transformers import AutoModelForImageClassification, Trainer

    folder = Path(args.work_dir) / f"teacher-seed{seed}"
    if (folder / "config.json").exists():
        return AutoModelForImageClassification.from_pretrained(folder)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = AFRPruner.from_pretrained(DEFAULT_MODEL, id2label=data["id2label"]).model
    Trainer(
        model=model, args=training_args(args, seed, folder / "trainer"),
        train_dataset=data["train"],
    ).train()  # fmt: skip
    model.save_pretrained(folder)
    results["teacher"] = {
        "setting": "dense teacher", "seed": seed, "accuracy": accuracy(model, data["test"]),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    return model


def student_run(args, data, seed: int, setting: tuple, teacher) -> dict:
    from transformers import Trainer

    label, structure, sparsity = setting
    start = time.perf_counter()
    config = PrunerConfig(
        method="afr", sparsity=sparsity, structure=structure, num_batches=args.num_batches,
        seed=seed,
    )  # fmt: skip
    torch.manual_seed(seed)  # the new classifier head: the same in both runs of a pair
    pruner = AFRPruner.from_pretrained(DEFAULT_MODEL, config, id2label=data["id2label"])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data["train"]), generator=generator)
    batches = [
        {"pixel_values": data["train"].x[idx], "labels": data["train"].y[idx]}
        for idx in order[: 32 * args.num_batches].split(32)
    ]
    pruner.prune(batches, show_progress=False)
    callbacks = [PruningMaskCallback.from_pruner(pruner)] if pruner.masks else []
    kwargs = dict(
        model=pruner.model, args=training_args(args, seed, Path(args.work_dir) / "student"),
        train_dataset=data["train"], callbacks=callbacks,
    )  # fmt: skip
    if teacher is None:
        trainer = Trainer(**kwargs)
    else:
        trainer = DistillationTrainer(
            teacher_model=teacher, alpha=args.alpha, temperature=args.temperature,
            cache_teacher_logits=True, **kwargs,
        )  # fmt: skip
    trainer.train()
    params = sum(p.numel() for p in pruner.model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in pruner.model.parameters())
    return {
        "setting": label, "seed": seed, "teacher": teacher is not None,
        "accuracy": accuracy(pruner.model, data["test"]), "parameters": params,
        "nonzero_parameters": nonzero, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def run_key(run: dict) -> str:
    return json.dumps([run["setting"], run["seed"], run.get("teacher")])


def summarize(runs: list[dict], meta: dict) -> str:
    def mean_std(values: list[float]) -> str:
        if not values:
            return "—"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f} (n={len(values)})"

    by = {}
    for run in runs:
        by.setdefault((run["setting"], run.get("teacher")), {})[run["seed"]] = run["accuracy"]
    lines = [
        "### Distillation recipe on hf_afr:typefaces (accuracy %, mean ± std over seeds)",
        "",
        f"`python benchmarks/distillation_recipe.py`: {meta['description']}",
        "",
        "| setting | without teacher | with teacher | gain (points, paired) | wins |",
        "|---|---:|---:|---:|---:|",
    ]
    teacher = list(by.get(("dense teacher", None), {}).values())
    lines.append(f"| dense teacher | {mean_std(teacher)} | — | — | — |")
    for label, _, _ in SETTINGS:
        plain, distilled = by.get((label, False), {}), by.get((label, True), {})
        paired = sorted(set(plain) & set(distilled))
        gains = [100 * (distilled[s] - plain[s]) for s in paired]
        gain = f"{statistics.mean(gains):+.1f}" if gains else "—"
        wins = f"{sum(g > 0 for g in gains)}/{len(gains)}" if gains else "—"
        row = f"| {label} | {mean_std(list(plain.values()))} | {mean_std(list(distilled.values()))}"
        lines.append(f"{row} | {gain} | {wins} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=6)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num_batches", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--settings", nargs="+", default=[s[0] for s in SETTINGS])
    p.add_argument("--output", default="benchmarks/results/distillation.md")
    p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "hf_afr_distillation"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    output = Path(args.output)
    partial = output.with_suffix(".partial.jsonl")
    runs = []
    if args.resume and partial.exists():
        for line in partial.read_text().splitlines():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by an interruption: that run reruns
                continue
    elif partial.exists():
        partial.unlink()
    done = {run_key(r) for r in runs}
    data = load_typefaces()
    meta = {
        "description": f"embedded tiny ViT, AFR on {args.num_batches} batches of 32, "
        f"{args.epochs:g} epochs AdamW lr {args.lr:g} batch {args.batch_size} (cosine, weight "
        f"decay 0.05), distillation alpha {args.alpha:g} and temperature {args.temperature:g} "
        f"(logits cached per example), seeds {args.seeds}; torch {torch.__version__}, "
        f"{args.threads} thread(s).",
    }

    def record(run: dict) -> None:
        runs.append(run)
        with open(partial, "a", encoding="utf-8") as f:
            f.write(json.dumps(run) + "\n")
        output.write_text(summarize(runs, meta))
        print(json.dumps(run), flush=True)

    settings = [s for s in SETTINGS if s[0] in args.settings]
    for setting in settings:  # one setting for every seed before the next setting
        for seed in args.seeds:
            extra = {}
            teacher = teacher_model(args, data, seed, extra)
            teacher_key = run_key({"setting": "dense teacher", "seed": seed})
            if teacher_key not in done:
                record(extra.get("teacher") or {
                    "setting": "dense teacher", "seed": seed,
                    "accuracy": accuracy(teacher, data["test"]),
                })  # fmt: skip
                done.add(teacher_key)
            for with_teacher in (False, True):
                key = run_key({"setting": setting[0], "seed": seed, "teacher": with_teacher})
                if key in done:
                    continue
                record(student_run(args, data, seed, setting, teacher if with_teacher else None))
                done.add(key)
    text = summarize(runs, meta)
    output.write_text(text)
    (output.with_suffix(".json")).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    return text


if __name__ == "__main__":
    print(main())
