"""Reports of the inference conversion: what shrinking removed, which kernel each layer runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BlockShrink:
    """What shrinking removed from one block.

    MACs: Linear multiply-adds per token. Units: MLP hidden units; for attention, the q/k and
    v dimensions summed over heads (zero padding included).
    """

    name: str
    kind: str
    before: str
    after: str
    removed: str
    macs_before: int
    macs_after: int
    units_before: int = 0
    units_after: int = 0


@dataclass
class ShrinkReport:
    """Per-block results of `shrink`, and the blocks it skipped with the reason."""

    blocks: list[BlockShrink] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def macs_before(self) -> int:
        return sum(b.macs_before for b in self.blocks)

    @property
    def macs_after(self) -> int:
        return sum(b.macs_after for b in self.blocks)

    @property
    def macs_reduction(self) -> float:
        """Fraction of the examined blocks' Linear multiply-adds removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def to_dict(self) -> dict:
        return {
            "blocks": [asdict(b) for b in self.blocks],
            "skipped": dict(self.skipped),
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": self.macs_reduction,
        }

    def to_markdown(self) -> str:
        lines = [
            "| block | kind | before | after | removed | Linear MACs/token |",
            "|---|---|---|---|---|---:|",
        ]
        for b in self.blocks:
            ratio = b.macs_after / b.macs_before if b.macs_before else 1.0
            lines.append(
                f"| {b.name} | {b.kind} | {b.before} | {b.after} | {b.removed} | "
                f"{b.macs_before:,} -> {b.macs_after:,} ({ratio:.0%}) |"
            )
        lines.append(
            f"| **total** | | | | | {self.macs_before:,} -> {self.macs_after:,} "
            f"(**-{self.macs_reduction:.1%}**) |"
        )
        lines += [f"\nSkipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


@dataclass
class LayerChoice:
    """The kernel chosen for one Linear, with the timing it was chosen on.

    `candidates`: this layer's measured best-of speed-up of each sparse kernel over dense;
    `speedup`: the chosen kernel's speed-up pooled (median) over the `pooled_over` layers of
    the same shape, input rows and sparsity.
    """

    name: str
    shape: tuple[int, int]
    input_rows: int
    sparsity: float
    kernel: str
    speedup: float | None
    candidates: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_dense: int = 0
    bytes_now: int = 0
    pooled_over: int = 1


@dataclass
class InferenceReport:
    """What `to_sparse_inference` did: the shrink table and, per Linear, the kernel it runs."""

    layers: list[LayerChoice] = field(default_factory=list)
    shrink: ShrinkReport | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    max_abs_diff: float | None = None

    @property
    def linear_bytes_dense(self) -> int:
        return sum(layer.bytes_dense for layer in self.layers)

    @property
    def linear_bytes_now(self) -> int:
        return sum(layer.bytes_now for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "shrink"}
        data["shrink"] = None if self.shrink is None else self.shrink.to_dict()
        return data

    def to_markdown(self) -> str:
        lines = [
            "| layer | shape | input rows | sparsity | kernel | measured speed-up | "
            "other kernels (speed-up or why not) | bytes |",
            "|---|---|---:|---:|---|---:|---|---:|",
        ]
        for c in self.layers:
            others = [f"{k} {v:.2f}x" for k, v in c.candidates.items() if k != c.kernel]
            others += [f"{k}: {why}" for k, why in c.skipped.items()]
            speed = "" if c.speedup is None else f"{c.speedup:.2f}x"
            if c.speedup is not None and c.pooled_over > 1:
                speed += f" (median of {c.pooled_over} alike)"
            lines.append(
                f"| {c.name} | {c.shape[0]}x{c.shape[1]} | {c.input_rows} | {c.sparsity:.1%} | "
                f"{c.kernel} | {speed} | {'; '.join(others)} | {c.bytes_dense:,} -> {c.bytes_now:,} |"
            )
        ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
        lines.append(
            f"\nResident parameter and buffer bytes: {self.bytes_before:,} -> {self.bytes_after:,} "
            f"({ratio:.1%}); the Linear layers above, dense {self.linear_bytes_dense:,} -> as "
            f"converted {self.linear_bytes_now:,}."
        )
        if self.max_abs_diff is not None:
            lines.append(
                f"Max abs output difference on the example inputs: {self.max_abs_diff:.2e}."
            )
        if self.shrink is not None and self.shrink.blocks:
            lines += ["", "Shrinking (before the kernel choice):", "", self.shrink.to_markdown()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()
