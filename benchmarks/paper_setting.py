"""Run the paper's experiments with the library's own fine-tuning script and tabulate them.

The grid (from the paper; see `benchmarks/paper/`):
- general recognition: CIFAR-10, CIFAR-100, Tiny-ImageNet at 90/95/98% sparsity,
- fine-grained recognition: 10 datasets at 80% sparsity, supervised and DINO ViT-B/16,
each with SNIP, ReFer and AFR. Every run is one `scripts/finetune.py` call (through
`accelerate launch` by default), so a GPU user reproduces it unchanged:

    python benchmarks/paper_setting.py --output_dir paper_runs --launcher accelerate
    python benchmarks/paper_setting.py --output_dir paper_runs --collect_only   # tables only

Beyond the paper, `--models` / `--general_models` also take `deit` (DeiT-B/16) and `dinov2`
(DINOv2-B), e.g. `--general_models supervised deit dinov2 --models supervised dino deit dinov2`
extends both tables; the default grid is the paper's.

`--dry_run` swaps in tiny local stand-ins (a random model of each model key's family, published
as the Hub checkpoint is, small generated imagefolders, two training steps) and runs the same code path offline in a few seconds per run. Finished runs
(an `all_results.json` with `eval_accuracy`) are skipped, so an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FINETUNE = REPO / "scripts" / "finetune.py"
GENERAL_SPARSITIES = (0.9, 0.95, 0.98)
FINE_GRAINED_SPARSITY = 0.8
METHODS = ("snip", "refer", "afr")

# The paper gives no fine-tuning recipe; these defaults are ours (override on the command line).
DEFAULT_TRAINING_ARGS = (
    "--num_train_epochs 10 --learning_rate 1e-4 --per_device_train_batch_size 64 "
    "--per_device_eval_batch_size 128 --weight_decay 0.05 --warmup_steps 0.1 "
    "--lr_scheduler_type cosine --bf16 --dataloader_num_workers 8 --num_batches 4"
)
DRY_RUN_TRAINING_ARGS = (
    "--max_steps 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 8 "
    "--num_batches 1 --use_cpu"
)


@dataclass(frozen=True)
class Run:
    model: str
    dataset: str
    sparsity: float
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}/{self.method}-s{self.sparsity:g}-seed{self.seed}"


def read_table(name: str) -> dict[str, dict[str, str]]:
    with open(HERE / "paper" / name, newline="", encoding="utf-8") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def plan_runs(args, datasets, models) -> list[Run]:
    runs = []
    for key, row in datasets.items():
        general = row["group"] == "general"
        model_keys = args.general_models if general else args.models
        sparsities = args.sparsities or (
            GENERAL_SPARSITIES if general else (FINE_GRAINED_SPARSITY,)
        )
        for model in model_keys:
            if model not in models:
                raise ValueError(f"Unknown model key {model!r}; known: {', '.join(models)}.")
            for sparsity in sparsities:
                for method in args.methods:
                    for seed in args.seeds:
                        runs.append(Run(model, key, sparsity, method, seed))
    return runs


def finetune_args(run: Run, args, datasets, models, stand_ins) -> list[str]:
    row = datasets[run.dataset]
    out = Path(args.output_dir) / run.name
    argv = [
        "--output_dir",
        str(out),
        "--method",
        run.method,
        "--sparsity",
        str(run.sparsity),
        "--seed",
        str(run.seed),
        "--do_train",
        "--do_eval",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    ]
    if stand_ins:
        argv += [
            "--model_name_or_path",
            stand_ins["models"][run.model],
            "--train_dir",
            stand_ins["train_dir"],
            "--validation_dir",
            stand_ins["validation_dir"],
        ]
        return argv + shlex.split(DRY_RUN_TRAINING_ARGS) + shlex.split(args.extra_args)
    argv += [
        "--model_name_or_path",
        models[run.model]["hub_id"],
        "--dataset_name",
        row["hub_id"],
        "--image_column_name",
        row["image_column"],
        "--label_column_name",
        row["label_column"],
    ]
    if row["eval_split"]:
        argv += [
            "--train_split_name",
            row["train_split"],
            "--validation_split_name",
            row["eval_split"],
        ]
    return argv + shlex.split(args.training_args) + shlex.split(args.extra_args)


def launch(argv: list[str], launcher: str) -> None:
    if launcher == "inprocess":
        saved = sys.argv
        sys.argv = [str(FINETUNE), *argv]
        try:
            runpy.run_path(str(FINETUNE), run_name="__main__")
        except SystemExit as exit_:  # the script ends with sys.exit(status)
            if exit_.code not in (0, None):
                raise RuntimeError(f"finetune.py exited with status {exit_.code}") from None
        finally:
            sys.argv = saved
        return
    prefix = ["accelerate", "launch"] if launcher == "accelerate" else [sys.executable]
    subprocess.run([*prefix, str(FINETUNE), *argv], check=True)


def read_accuracy(output_dir: Path, run: Run) -> float | None:
    path = output_dir / run.name / "all_results.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("eval_accuracy")


def make_stand_ins(root: Path, models_table: dict[str, dict[str, str]]) -> dict:
    """Per model key a tiny random model of its family, saved as the Hub checkpoint is
    (`model_type`, `published_as` in paper/models.csv), and a small imagefolder, offline."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoConfig, ViTImageProcessor

    tiny = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    models = {}
    for key, row in models_table.items():
        torch.manual_seed(0)
        config = AutoConfig.for_model(row["model_type"], **tiny)
        model = getattr(transformers, row["published_as"])(config)
        path = root / "models" / key
        model.save_pretrained(path)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
        models[key] = str(path)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("validation", 4)):
        for label in ("a", "b", "c"):
            folder = root / "data" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return {
        "models": models,
        "train_dir": str(root / "data" / "train"),
        "validation_dir": str(root / "data" / "validation"),
    }


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def tabulate(runs: list[Run], output_dir: Path, datasets) -> tuple[str, dict]:
    """Markdown tables in the paper's shape (mean over seeds), ours beside the paper's numbers."""
    paper = json.loads((HERE / "paper" / "paper_results.json").read_text())
    acc: dict[tuple, list[float]] = {}
    for run in runs:
        value = read_accuracy(output_dir, run)
        if value is not None:
            acc.setdefault((run.model, run.dataset, run.sparsity, run.method), []).append(value)
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    lines = ["### General recognition (accuracy %, ours / paper)", ""]
    sparsities = sorted({r.sparsity for r in runs if datasets[r.dataset]["group"] == "general"})
    lines += [
        "| model | dataset | method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|---|---|" + "---:|" * len(sparsities),
    ]
    for model, dataset, method in sorted(
        {(r.model, r.dataset, r.method) for r in runs if datasets[r.dataset]["group"] == "general"}
    ):
        ref = paper["general"].get(dataset, {}).get(method, [])
        cells = []
        for s in sparsities:
            idx = paper["general_sparsities"].index(s) if s in paper["general_sparsities"] else None
            theirs = f"{ref[idx]:.2f}" if idx is not None and idx < len(ref) else "—"
            cells.append(f"{_cell(mean.get((model, dataset, s, method)))} / {theirs}")
        lines.append(f"| {model} | {dataset} | {method} | " + " | ".join(cells) + " |")
    fine = sorted(
        {(r.dataset, r.sparsity) for r in runs if datasets[r.dataset]["group"] != "general"}
    )
    models = sorted({r.model for r in runs if datasets[r.dataset]["group"] != "general"})
    methods = [m for m in (*METHODS, "magnitude", "random") if m in {r.method for r in runs}]
    if fine:
        header = [f"{m} {model}" for model in models for m in methods]
        lines += [
            "",
            "### Fine-grained recognition (accuracy %, ours / paper)",
            "",
            "| dataset | sparsity | " + " | ".join(header) + " |",
            "|---|---:|" + "---:|" * len(header),
        ]
        for dataset, s in fine:
            cells = []
            for model in models:
                for m in methods:
                    theirs = paper["fine_grained"].get(dataset, {}).get(model, {}).get(m)
                    cells.append(
                        f"{_cell(mean.get((model, dataset, s, m)))} / "
                        + ("—" if theirs is None else f"{theirs:.2f}")
                    )
            lines.append(f"| {dataset} | {s:.0%} | " + " | ".join(cells) + " |")
    raw = {"/".join(map(str, k)): v for k, v in acc.items()}
    return "\n".join(lines) + "\n", raw


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument(
        "--datasets", nargs="+", help="dataset keys (default: all in paper/datasets.csv)"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["supervised", "dino"],
        help="fine-grained models: keys of paper/models.csv (supervised, dino; beyond the "
        "paper: deit, dinov2)",
    )
    p.add_argument(
        "--general_models",
        nargs="+",
        default=["supervised"],
        help="general-task models (keys of paper/models.csv, as --models)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=["snip", "refer", "afr", "magnitude", "random"],
    )
    p.add_argument("--sparsities", nargs="+", type=float, help="override the paper's sparsities")
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument(
        "--launcher", choices=["accelerate", "python", "inprocess"], default="accelerate"
    )
    p.add_argument(
        "--training_args", default=DEFAULT_TRAINING_ARGS, help="TrainingArguments for every run"
    )
    p.add_argument("--extra_args", default="", help="appended to every finetune.py call")
    p.add_argument(
        "--dry_run",
        "--dry-run",
        action="store_true",
        help="tiny offline stand-ins, 2 steps per run",
    )
    p.add_argument(
        "--collect_only", "--collect-only", action="store_true", help="only tabulate finished runs"
    )
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    datasets, models = read_table("datasets.csv"), read_table("models.csv")
    if args.datasets:
        unknown = sorted(set(args.datasets) - set(datasets))
        if unknown:
            raise SystemExit(f"Unknown dataset keys {unknown}; known: {', '.join(datasets)}.")
        datasets = {k: datasets[k] for k in args.datasets}
    output_dir = Path(args.output_dir)
    runs = plan_runs(args, datasets, models)
    stand_ins = make_stand_ins(output_dir / "_stand_ins", models) if args.dry_run else None
    for i, run in enumerate(runs, 1):
        if args.collect_only or read_accuracy(output_dir, run) is not None:
            continue
        print(f"[{i}/{len(runs)}] {run.name}", flush=True)
        launch(finetune_args(run, args, datasets, models, stand_ins), args.launcher)
    table, raw = tabulate(runs, output_dir, read_table("datasets.csv"))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "paper_table.md").write_text(table)
    (output_dir / "paper_results.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    print(table)
    return table


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
