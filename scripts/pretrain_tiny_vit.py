#!/usr/bin/env python
"""Pretrain the tiny glyph ViT that ships with hf_afr as its default pretrained model.

A ``ViTForImageClassification`` is trained from scratch on the ``"pretrain"`` glyph set
(Latin, Greek and symbol classes rendered from the fonts bundled with matplotlib, augmented on
the fly) and evaluated on held-out monospaced fonts. The output directory receives
``config.json``, ``model.safetensors``, ``preprocessor_config.json``, ``training_log.json`` and a
``README.md`` model card.

The command that produced ``hf_afr/pretrained/tiny-vit-glyphs`` (about 20 minutes on one CPU
thread; the defaults are that recipe)::

    python scripts/pretrain_tiny_vit.py --output_dir hf_afr/pretrained/tiny-vit-glyphs \
        --epochs 10 --steps_per_epoch 500 --batch_size 64 --seed 0 --threads 1

``--card_from_log DIR`` rewrites ``DIR/README.md`` from ``DIR/training_log.json`` without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

from hf_afr.data import (
    PRETRAIN_GLYPH_SET,
    GlyphBank,
    glyph_arrays,
)

# The processor rescales by 1/255 and normalises with mean = std = 0.5, i.e. x -> x / 127.5 - 1.
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5
DEFAULT_OUTPUT_DIR = "hf_afr/pretrained/tiny-vit-glyphs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps_per_epoch", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min_lr", type=float, default=1e-5)
    p.add_argument("--warmup_steps", type=int, default=None, help="default: 8%% of all steps")
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--label_smoothing", type=float, default=0.1)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--augment_strength", type=float, default=1.0, help="final strength")
    p.add_argument(
        "--augment_start_strength",
        type=float,
        default=0.5,
        help="strength at step 0, raised linearly to --augment_strength (curriculum)",
    )
    p.add_argument(
        "--augment_ramp_fraction",
        type=float,
        default=0.5,
        help="fraction of the training steps over which the strength is raised",
    )
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--patch_size", type=int, default=4)
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--mlp_ratio", type=int, default=4)
    p.add_argument(
        "--mimetic_init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="initialise attention so that W_q W_k^T ~ I and W_v W_o ~ -I (faster convergence)",
    )
    p.add_argument(
        "--sincos_pos_embed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="initialise the (learned) position embeddings with 2-D sine-cosine values",
    )
    p.add_argument("--val_per_class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast for training steps (final evaluation is always fp32)",
    )
    p.add_argument(
        "--benchmark_steps",
        type=int,
        default=0,
        help="only time this many training steps, print throughput and exit",
    )
    p.add_argument(
        "--card_from_log",
        metavar="DIR",
        default=None,
        help="only rewrite DIR/README.md from DIR/training_log.json and exit",
    )
    args = p.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size", "threads", "val_per_class"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.image_size % args.patch_size:
        p.error("--image_size must be a multiple of --patch_size")
    if args.hidden_size % args.num_heads:
        p.error("--hidden_size must be a multiple of --num_heads")
    return args


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, S, S]`` grayscale -> float ``[B, 3, S, S]``, exactly as the processor does."""
    x = images.float().unsqueeze(1) * (1 / 255)
    return ((x - IMAGE_MEAN) / IMAGE_STD).expand(-1, 3, -1, -1)


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(
    model: ViTForImageClassification,
    images: torch.Tensor,
    labels: torch.Tensor,
    bf16: bool = False,
    batch_size: int = 512,
) -> dict[str, float]:
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=x).logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train()
    return {"accuracy": correct / len(labels), "loss": loss_sum / len(labels)}


def build_model(args: argparse.Namespace, class_names: list[str]) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=3,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=args.mlp_ratio * args.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )
    return ViTForImageClassification(config)


def sincos_position_embeddings(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings ``[grid * grid, dim]`` (as in MAE)."""
    if dim % 4:
        raise ValueError("hidden size must be a multiple of 4 for sine-cosine embeddings")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        angles = pos[:, None].double() * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


@torch.no_grad()
def initialise(model: ViTForImageClassification, args: argparse.Namespace) -> None:
    """Optional data-free initialisations that speed up training of small ViTs."""
    d = args.hidden_size
    if args.sincos_pos_embed:
        grid = args.image_size // args.patch_size
        pos = model.vit.embeddings.position_embeddings
        pos[0, 1:] = sincos_position_embeddings(grid, d) * 0.1
        pos[0, 0] = 0
    if args.mimetic_init:
        # Trockman & Kolter (2023), "Mimetic initialization of self-attention layers".
        head_dim = d // args.num_heads
        for layer in model.vit.layers:
            attn = layer.attention
            for h in range(args.num_heads):
                m = 0.7 * torch.randn(d, d) / math.sqrt(d) + 0.7 * torch.eye(d)
                u, s, vh = torch.linalg.svd(m)
                rows = slice(h * head_dim, (h + 1) * head_dim)
                root = s[:head_dim].sqrt()
                attn.q_proj.weight[rows] = (u[:, :head_dim] * root).T
                attn.k_proj.weight[rows] = root[:, None] * vh[:head_dim]
            m = 0.4 * torch.randn(d, d) / math.sqrt(d) - 0.4 * torch.eye(d)
            u, s, vh = torch.linalg.svd(m)
            attn.v_proj.weight.copy_((u * s.sqrt()).T)
            attn.o_proj.weight.copy_(vh.T * s.sqrt())


def make_processor(image_size: int):
    try:  # transformers >= 5 without torchvision: the PIL backend of ViTImageProcessor
        from transformers import ViTImageProcessorPil as processor_cls
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as processor_cls
    return processor_cls(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[IMAGE_MEAN] * 3,
        image_std=[IMAGE_STD] * 3,
    )


def check_processor(output_dir: str, model, images: torch.Tensor) -> float:
    """Max |difference| between logits of the training path and of the saved processor."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(output_dir)
    pil = [Image.fromarray(img.numpy()).convert("RGB") for img in images]
    inputs = processor(images=pil, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        a = model(pixel_values=normalize(images)).logits
        b = model(pixel_values=inputs["pixel_values"]).logits
    return float((a - b).abs().max())


def reproduce_command(args: argparse.Namespace) -> str:
    """The shortest command line that reproduces ``args``."""
    defaults = vars(parse_args([]))
    always = {"output_dir", "epochs", "steps_per_epoch", "batch_size", "seed", "threads"}
    parts = ["python", "scripts/pretrain_tiny_vit.py"]
    for key, value in vars(args).items():
        if key in ("benchmark_steps", "card_from_log") or (
            key not in always and value == defaults[key]
        ):
            continue
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        else:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + " CPU"
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def write_model_card(output_dir: str, log: dict) -> None:
    a = log["args"]
    final = log["final"]
    n_cls = log["num_classes"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    inits = []
    if a["mimetic_init"]:
        inits.append("mimetic initialisation of the attention layers (Trockman & Kolter, 2023)")
    if a["sincos_pos_embed"]:
        inits.append("2-D sine-cosine initialisation of the position embeddings")
    init = " and ".join(inits) if inits else "default transformers initialisation"
    rows = "\n".join(
        f"| {e['epoch']} | {e['step']} | {e['train_loss']:.3f} | {pct(e['train_accuracy'])} | "
        f"{pct(e['validation_accuracy'])} | {pct(e['validation_clean_accuracy'])} | "
        f"{e['elapsed_s'] / 60:.1f} |"
        for e in log["epochs"]
    )
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metadata = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["vit", "image-classification", "glyphs", "hf_afr"],
        model_name="tiny-vit-glyphs",
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type="hf_afr-glyphs",
                dataset_name="rendered glyphs, held-out monospaced fonts "
                '(hf_afr.data glyph set "pretrain")',
                dataset_split="validation",
                metric_type="accuracy",
                metric_value=round(final["validation_accuracy"], 4),
            )
        ],
    )
    body = f"""# tiny-vit-glyphs

A small Vision Transformer (`ViTForImageClassification`, {log["num_parameters"] / 1e6:.2f} M
parameters) pretrained from scratch by `hf_afr` on images of rendered glyphs. It is the default
pretrained model of the library: it plays the role that an ImageNet checkpoint plays for large
ViTs, at a size that prunes and fine-tunes on a CPU in seconds.

## Architecture

| image size | patch | hidden | layers | heads | MLP | classes |
|---|---|---|---|---|---|---|
| {a["image_size"]} x {a["image_size"]} RGB | {a["patch_size"]} | {a["hidden_size"]} | \
{a["num_layers"]} | {a["num_heads"]} | {a["mlp_ratio"] * a["hidden_size"]} | {n_cls} |

Inputs are grayscale glyphs (white ink on a dark background) replicated to three channels and
normalised as in `preprocessor_config.json` (rescale by 1/255, mean = std = 0.5).
`config.json` maps label ids to the glyphs themselves (`id2label`).

## Data

`hf_afr.data.GlyphBank.build("pretrain", split)`: {n_cls} classes = 52 Latin letters, Greek
letters that do not look like Latin ones and math/punctuation symbols (no Arabic digits and no
Cyrillic, which are reserved for downstream tasks). Glyphs are rendered with PIL from the TrueType
fonts shipped with matplotlib and randomly augmented on the fly (rotation, scale, aspect, shear,
translation, elastic warp, stroke erosion/dilation, blur, contrast, gaussian noise).

* training fonts ({len(log["train_fonts"])} proportional typefaces): {", ".join(log["train_fonts"])}
* held-out validation fonts ({len(log["validation_fonts"])} monospaced typefaces):
  {", ".join(log["validation_fonts"])}

## Training recipe

AdamW (lr {a["lr"]:g}, betas 0.9/0.999, weight decay {a["weight_decay"]:g} on weight matrices),
{log["warmup_steps"]} linear warmup steps then cosine decay to {a["min_lr"]:g}; batch size
{a["batch_size"]}, {log["total_steps"]} steps ({a["epochs"]} epochs of {a["steps_per_epoch"]} steps,
{log["total_steps"] * a["batch_size"]:,} freshly augmented images); augmentation strength raised
linearly from {a["augment_start_strength"]:g} to {a["augment_strength"]:g} over the first
{100 * a["augment_ramp_fraction"]:g}% of the steps; label smoothing {a["label_smoothing"]:g};
gradient clipping at norm {a["grad_clip"]:g}; {"bfloat16 autocast" if a["bf16"] else "float32"}
training steps; {init}; seed {a["seed"]}. Training took {log["train_time_s"] / 60:.1f} minutes on
{a["threads"]} thread(s) of an {log["hardware"]}.

## Results

Accuracy of the final weights (float32), on {a["val_per_class"]} augmented images per class:

| split | accuracy |
|---|---|
| training fonts (augmented) | {pct(final["train_accuracy"])} |
| held-out monospaced fonts (augmented), **validation** | **{pct(final["validation_accuracy"])}** |
| held-out monospaced fonts, clean renderings | {pct(final["validation_clean_accuracy"])} |

Per epoch (training metrics are running averages over the epoch's augmented batches):

| epoch | step | train loss | train acc | val acc | clean val acc | minutes |
|---|---|---|---|---|---|---|
{rows}

## Reproduce

```bash
{log["command"]}
```

Data and initialisation are seeded; the same command on the same hardware and thread count
gives the same weights. `training_log.json` holds every number above.

## Intended use and limitations

A toy backbone for pruning and transfer-learning experiments (for example fine-tuning on the
Cyrillic glyph task or on scikit-learn's handwritten digits via `hf_afr.data`). It knows only
isolated glyphs at 32 x 32 and is not a general image model.
"""
    ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}").save(
        os.path.join(output_dir, "README.md")
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.card_from_log:
        with open(os.path.join(args.card_from_log, "training_log.json"), encoding="utf-8") as f:
            log = json.load(f)
        write_model_card(args.card_from_log, log)
        return log
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    train_bank = GlyphBank.build(PRETRAIN_GLYPH_SET, "train", master_size=2 * args.image_size)
    val_bank = GlyphBank.build(PRETRAIN_GLYPH_SET, "validation", master_size=2 * args.image_size)
    class_names = train_bank.class_names
    num_classes = len(class_names)

    # Fixed evaluation sets (generated once, independent of the training stream).
    def fixed_set(glyph_split: str, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labels = glyph_arrays(
            PRETRAIN_GLYPH_SET,
            glyph_split,
            args.val_per_class,
            args.image_size,
            args.seed,
            augment=augment,
        )
        return torch.from_numpy(imgs[..., 0].copy()), torch.from_numpy(labels)

    val_images, val_labels = fixed_set("validation", True)
    train_eval_images, train_eval_labels = fixed_set("train", True)
    clean = val_bank.sample(
        len(val_bank),
        torch.Generator().manual_seed(args.seed),
        args.image_size,
        0.0,
        labels=val_bank.labels,
    )[0]
    clean_images, clean_labels = clean, val_bank.labels

    model = build_model(args, class_names)
    initialise(model, args)
    num_parameters = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embeddings" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    total = args.epochs * args.steps_per_epoch
    if args.benchmark_steps:
        total = args.benchmark_steps
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, (8 * total) // 100)
    data_gen = torch.Generator().manual_seed(args.seed + 1)

    print(
        f"{num_classes} classes, {len(train_bank)} train masters from {len(train_bank.fonts)} fonts, "
        f"{len(val_bank)} validation masters from {len(val_bank.fonts)} fonts; "
        f"{num_parameters / 1e6:.2f} M parameters; {total} steps",
        flush=True,
    )
    epochs_log: list[dict] = []
    start = time.time()
    step = 0
    model.train()
    for epoch in range(1, args.epochs + 1):
        loss_sum, correct, seen = 0.0, 0, 0
        for _ in range(args.steps_per_epoch):
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr, args.min_lr)
            ramp = min(1.0, step / max(1.0, args.augment_ramp_fraction * total))
            strength = args.augment_start_strength + ramp * (
                args.augment_strength - args.augment_start_strength
            )
            images, labels = train_bank.sample(args.batch_size, data_gen, args.image_size, strength)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(pixel_values=normalize(images)).logits.float()
            loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            if args.benchmark_steps and step % 10 == 0:
                rate = step * args.batch_size / (time.time() - start)
                print(f"step {step}: {rate:.0f} images/s, loss {loss.item():.3f}", flush=True)
        if args.benchmark_steps:
            elapsed = time.time() - start
            print(
                f"benchmark: {step} steps in {elapsed:.1f}s = {elapsed / step:.3f} s/step, "
                f"{step * args.batch_size / elapsed:.0f} images/s"
            )
            return {}
        val = evaluate(model, val_images, val_labels, bf16=args.bf16)
        val_clean = evaluate(model, clean_images, clean_labels, bf16=args.bf16)
        record = {
            "epoch": epoch,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "validation_loss": val["loss"],
            "validation_accuracy": val["accuracy"],
            "validation_clean_accuracy": val_clean["accuracy"],
            "elapsed_s": time.time() - start,
        }
        epochs_log.append(record)
        print(json.dumps(record), flush=True)
    train_time = time.time() - start

    # Final float32 evaluation of the weights that are saved.
    final_val = evaluate(model, val_images, val_labels)
    final = {
        "train_accuracy": evaluate(model, train_eval_images, train_eval_labels)["accuracy"],
        "validation_accuracy": final_val["accuracy"],
        "validation_loss": final_val["loss"],
        "validation_clean_accuracy": evaluate(model, clean_images, clean_labels)["accuracy"],
    }
    print("final (fp32):", json.dumps(final), flush=True)

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)
    make_processor(args.image_size).save_pretrained(args.output_dir)
    max_diff = check_processor(args.output_dir, model, val_images[:64])
    if max_diff > 1e-4:
        raise RuntimeError(f"processor and training normalisation disagree (max diff {max_diff})")

    log = {
        "args": vars(args),
        "command": reproduce_command(args),
        "num_classes": num_classes,
        "class_names": class_names,
        "num_parameters": num_parameters,
        "train_fonts": [f.name for f in train_bank.fonts],
        "validation_fonts": [f.name for f in val_bank.fonts],
        "train_masters": len(train_bank),
        "validation_masters": len(val_bank),
        "total_steps": total,
        "warmup_steps": warmup,
        "train_time_s": train_time,
        "epochs": epochs_log,
        "final": final,
        "processor_max_logit_diff": max_diff,
        "hardware": cpu_name(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }
    with open(os.path.join(args.output_dir, "training_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=2, ensure_ascii=False)
    write_model_card(args.output_dir, log)
    print(f"saved to {args.output_dir}", flush=True)
    return log


if __name__ == "__main__":
    main(sys.argv[1:])
