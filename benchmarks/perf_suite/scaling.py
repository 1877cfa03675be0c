"""Section 5: scoring time against the number of scoring samples and the parameter count.

SNIP and AFR through the public `hf_afr.get_criterion(method).score`, best of a few calls per
point, with least-squares line fits per series.
"""

from __future__ import annotations

import dataclasses
import math

from .common import (
    Runtime,
    best_time,
    build_model,
    make_batches,
    require_finite,
    scorer,
    shape_kwargs,
)

SCALING_METHODS = ("snip", "afr")


@dataclasses.dataclass(frozen=True)
class ScalingSettings:
    shape: str
    batch_size: int
    num_batches: tuple[int, ...]  # scoring batches per point of the "samples" series
    depths: tuple[int, ...]  # encoder layers per point of the "depth" series
    widths: tuple[int, ...]  # hidden sizes per point of the "width" series
    repeats: int = 1


PRESETS = {
    "full": ScalingSettings("ViT-S/16-6L", 4, (1, 2, 4, 8), (2, 4, 8, 12), (192, 384, 576, 768), 2),
    "quick": ScalingSettings("ViT-S/16-6L", 2, (1, 2, 3), (2, 4, 6), ()),
    "toy": ScalingSettings("toy", 2, (1, 2), (1, 2), (16, 32)),
}


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = intercept + slope x, its R^2 and largest relative residual."""
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


def _shape_of(base: dict, key: str, value: int) -> dict:
    if key == "depth":
        return {**base, "num_hidden_layers": value}
    head_dim = base["hidden_size"] // base["num_attention_heads"]
    return {
        **base,
        "hidden_size": value,
        "num_attention_heads": max(1, value // head_dim),
        "intermediate_size": 4 * value,
    }


def _points(model, batches, settings: ScalingSettings, rt: Runtime, x: float, **extra) -> list:
    return [
        {
            "x": x,
            "method": m,
            "s": best_time(scorer(model, batches, m), settings.repeats, rt),
            **extra,
        }
        for m in SCALING_METHODS
    ]


def run(settings: ScalingSettings, rt: Runtime) -> dict:
    series = {}
    model = build_model(settings.shape, rt)
    points = []
    for n in settings.num_batches:
        batches = make_batches(model, n, settings.batch_size, rt)
        points += _points(model, batches, settings, rt, n * settings.batch_size)
    series["samples"] = {"label": f"scoring samples ({settings.shape})", "points": points}
    base = shape_kwargs(settings.shape)
    for key, values in (("depth", settings.depths), ("width", settings.widths)):
        points = []
        for value in values:
            model = build_model(_shape_of(base, key, value), rt)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            batches = make_batches(model, 1, settings.batch_size, rt)
            points += _points(model, batches, settings, rt, params, **{key: value})
        if points:
            label = f"parameters, M (varying {key}, batch {settings.batch_size})"
            series[key] = {"label": label, "points": points}
    for name, s in series.items():
        require_finite([p["s"] for p in s["points"]], f"scaling series {name!r}")
        s["fits"] = {}
        for method in SCALING_METHODS:
            pts = [p for p in s["points"] if p["method"] == method]
            if len(pts) >= 2:
                s["fits"][method] = linear_fit([p["x"] for p in pts], [p["s"] for p in pts])
    return {"series": series, "batch_size": settings.batch_size}


def markdown(result: dict) -> str:
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
            snip, afr = by.get(("snip", x), math.nan), by.get(("afr", x), math.nan)
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
