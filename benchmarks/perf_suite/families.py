"""Section 7: scoring cost across families, AFR/SNIP and ReFer/SNIP of DeiT and Swin against ViT.

The family-specific parts of scoring (DeiT's extra token, Swin's per-stage hidden states of
different widths and its patch-merging layers, the families' feature reductions) must not
make the criteria relatively dearer than on a ViT: target, each family's ratio within 5% of
ViT's (`ratio_family <= 1.05 * ratio_vit`).

Every variant (3 models x SNIP, ReFer, AFR) runs in the same interleaved rounds, the order
rotating each round, so machine load hits all of them alike; a ratio is the median of its
per-round ratios, and "vs ViT" the family's ratio over ViT's. Random weights (timing does not
depend on the weights). DeiT differs from ViT by one token only: the gap between their ratios
shows the noise of the run.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch
import transformers

from .common import NUM_LABELS, Runtime, interleaved, ratio, require_finite, scorer

METHODS = ("snip", "refer", "afr")
TARGET = 1.05  # family ratio / ViT ratio

_B16 = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12)
_B16 |= dict(num_attention_heads=12, intermediate_size=3072)
_S = dict(image_size=112, patch_size=16, hidden_size=192, num_hidden_layers=4)
_S |= dict(num_attention_heads=3, intermediate_size=768)
_TOY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2)
_TOY |= dict(num_attention_heads=2, intermediate_size=64)


@dataclasses.dataclass(frozen=True)
class FamilySettings:
    models: tuple[tuple[str, str, dict], ...]  # (row name, config class, config kwargs)
    batch_size: int
    rounds: int


PRESETS = {
    "full": FamilySettings(
        (
            ("ViT-B/16", "ViTConfig", _B16),
            ("DeiT-B/16 (distilled)", "DeiTConfig", _B16),
            (
                "Swin-T",
                "SwinConfig",
                dict(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2])
                | dict(num_heads=[3, 6, 12, 24], window_size=7),
            ),
        ),
        batch_size=4,
        rounds=11,
    ),
    "quick": FamilySettings(
        (
            ("ViT, 4 layers, 192 wide", "ViTConfig", _S),
            ("DeiT, 4 layers, 192 wide", "DeiTConfig", _S),
            (
                "Swin, 3 stages, 48 wide",
                "SwinConfig",
                dict(image_size=112, patch_size=4, embed_dim=48, depths=[2, 2, 2])
                | dict(num_heads=[2, 4, 8], window_size=7),
            ),
        ),
        batch_size=4,
        rounds=15,
    ),
    "toy": FamilySettings(
        (
            ("ViT", "ViTConfig", _TOY),
            ("DeiT", "DeiTConfig", _TOY),
            (
                "Swin",
                "SwinConfig",
                dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1])
                | dict(num_heads=[2, 2], window_size=4),
            ),
        ),
        batch_size=2,
        rounds=2,
    ),
}


def build(config_class: str, kwargs: dict, rt: Runtime, seed: int = 0):
    """A random-weight classifier of the family (its registered Auto class), in eval mode."""
    from hf_afr.architectures import get_architecture

    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(num_labels=NUM_LABELS, **kwargs)
    return get_architecture(config).model_cls(config).to(rt.device, rt.dtype).eval()


def run(settings: FamilySettings, rt: Runtime) -> dict:
    fns, models = {}, {}
    for name, config_class, kwargs in settings.models:
        model = build(config_class, kwargs, rt)
        generator = torch.Generator().manual_seed(1)
        n = model.config.image_size
        batch = {
            "pixel_values": torch.randn(settings.batch_size, 3, n, n, generator=generator).to(
                rt.device, rt.dtype
            ),
            "labels": torch.randint(0, NUM_LABELS, (settings.batch_size,), generator=generator).to(
                rt.device
            ),
        }
        models[name] = model
        for method in METHODS:
            fns[f"{name} | {method}"] = scorer(model, [batch], method)
    times = interleaved(fns, settings.rounds, rt)
    require_finite((t for ts in times.values() for t in ts), "family scoring times")
    rows = []
    for name, model in models.items():
        row = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
        for method in ("refer", "afr"):
            row[f"{method}/snip"] = ratio(times, f"{name} | {method}", f"{name} | snip")
            reference = rows[0][f"{method}/snip"] if rows else row[f"{method}/snip"]
            row[f"{method}/snip vs vit"] = row[f"{method}/snip"]["median"] / reference["median"]
        row["snip_s"] = statistics.median(times[f"{name} | snip"])
        rows.append(row)
    return {
        "batch_size": settings.batch_size,
        "rounds": settings.rounds,
        "rows": rows,
        "times": times,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Batch {result['batch_size']} x 1, {result['rounds']} interleaved rounds "
        f"(target: each family's ratio <= {TARGET:.2f} x ViT's).",
        "",
        "| model | params | SNIP | ReFer/SNIP | vs ViT | AFR/SNIP | vs ViT | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        worst = max(row["refer/snip vs vit"], row["afr/snip vs vit"])
        verdict = (
            "reference"
            if row is result["rows"][0]
            else ("met" if worst <= TARGET else f"missed ({worst:.3f} > {TARGET})")
        )
        lines.append(
            f"| {row['model']} | {row['params_m']:.1f} M | {row['snip_s'] * 1000:.0f} ms "
            f"| {row['refer/snip']['median']:.2f} | {row['refer/snip vs vit'] - 1:+.1%} "
            f"| {row['afr/snip']['median']:.2f} | {row['afr/snip vs vit'] - 1:+.1%} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
