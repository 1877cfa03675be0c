"""Sparsity report: global and per-tensor sparsity, with fully pruned tensors flagged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class TensorSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0

    @property
    def fully_pruned(self) -> bool:
        return self.numel > 0 and self.pruned == self.numel


@dataclass
class SparsityReport:
    """Per-tensor and global sparsity of a set of masks (True = kept)."""

    tensors: list[TensorSparsity] = field(default_factory=list)

    @classmethod
    def from_masks(cls, masks: dict[str, torch.Tensor]) -> SparsityReport:
        return cls(
            [
                TensorSparsity(name, tuple(m.shape), m.numel(), int(m.numel() - m.sum().item()))
                for name, m in masks.items()
            ]
        )

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def pruned(self) -> int:
        return sum(t.pruned for t in self.tensors)

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0

    @property
    def fully_pruned(self) -> list[str]:
        """Names of tensors whose every weight is pruned."""
        return [t.name for t in self.tensors if t.fully_pruned]

    def to_dict(self) -> dict:
        return {
            "sparsity": self.sparsity,
            "numel": self.numel,
            "pruned": self.pruned,
            "fully_pruned": self.fully_pruned,
            "tensors": [
                {**asdict(t), "shape": list(t.shape), "sparsity": t.sparsity} for t in self.tensors
            ],
        }

    def to_markdown(self) -> str:
        """A markdown table, one row per tensor, fully pruned ones marked, global total last."""
        rows = ["| parameter | shape | pruned | sparsity |", "|---|---|---:|---:|"]
        for t in self.tensors:
            flag = " **(100% pruned)**" if t.fully_pruned else ""
            shape = "x".join(map(str, t.shape))
            rows.append(f"| {t.name}{flag} | {shape} | {t.pruned}/{t.numel} | {t.sparsity:.2%} |")
        rows.append(f"| **total** | | {self.pruned}/{self.numel} | {self.sparsity:.2%} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        width = max([len(t.name) for t in self.tensors] + [9])
        lines = [f"{'parameter':<{width}}  {'numel':>10}  {'pruned':>10}  sparsity"]
        for t in self.tensors:
            flag = "  FULLY PRUNED" if t.fully_pruned else ""
            lines.append(
                f"{t.name:<{width}}  {t.numel:>10}  {t.pruned:>10}  {t.sparsity:8.2%}{flag}"
            )
        lines.append(
            f"{'total':<{width}}  {self.numel:>10}  {self.pruned:>10}  {self.sparsity:8.2%}"
        )
        return "\n".join(lines)
