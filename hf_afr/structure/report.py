"""What structured pruning removed: heads and MLP units per block, parameters, MACs per image.

Everything is computed from the model config alone (a pruned config carries
`layer_num_attention_heads` and `layer_intermediate_sizes`): the dense and the pruned model are
built on the meta device (no memory, no weights) and a forward pass on meta tensors counts the
multiply-adds of every Linear and convolution and of the attention products
(`q k^T` and `softmax(.) v`: 2 * tokens^2 * heads * head_dim per sequence or window).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..architectures import encoder_blocks, get_architecture
from .slicing import get_submodule, layer_widths, set_widths, transformer_layers

HEADS_KEY = "layer_num_attention_heads"
UNITS_KEY = "layer_intermediate_sizes"


def is_structured(config: Any) -> bool:
    """Whether a model config records per-block widths of structured pruning."""
    return getattr(config, HEADS_KEY, None) is not None


@dataclass
class StructureReport:
    """Per-block widths before/after, and model size and cost before/after."""

    blocks: list[str]
    heads_before: list[int]
    heads_after: list[int]
    units_before: list[int]
    units_after: list[int]
    prunable_before: int
    prunable_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable encoder Linear weights removed."""
        return 1 - self.prunable_after / self.prunable_before if self.prunable_before else 0.0

    @property
    def fully_pruned(self) -> list[str]:
        return []  # every block keeps at least one head and one unit

    def to_dict(self) -> dict:
        return {**self.__dict__, "sparsity": self.sparsity}

    def to_markdown(self) -> str:
        rows = ["| block | heads | MLP units |", "|---|---:|---:|"]
        for name, hb, ha, ub, ua in zip(
            self.blocks, self.heads_before, self.heads_after, self.units_before, self.units_after
        ):
            rows.append(f"| {name} | {ha}/{hb} | {ua}/{ub} |")
        rows += [
            "",
            "| | dense | pruned | ratio |",
            "|---|---:|---:|---:|",
            _row("parameters", self.params_before, self.params_after),
            _row("MACs per image", self.macs_before, self.macs_after),
            _row("prunable encoder Linear weights", self.prunable_before, self.prunable_after),
        ]
        return "\n".join(rows)

    def __str__(self) -> str:
        width = max(len(b) for b in self.blocks) if self.blocks else 5
        lines = [f"{'block':<{width}}  heads   MLP units"]
        for name, hb, ha, ub, ua in zip(
            self.blocks, self.heads_before, self.heads_after, self.units_before, self.units_after
        ):
            lines.append(f"{name:<{width}}  {ha:>2}/{hb:<3}  {ua:>5}/{ub}")
        lines.append(
            f"parameters {self.params_after:,} / {self.params_before:,}; MACs per image "
            f"{self.macs_after / 1e9:.3g} G / {self.macs_before / 1e9:.3g} G; prunable weights "
            f"removed {self.sparsity:.1%}"
        )
        return "\n".join(lines)


def _row(what: str, before: int, after: int) -> str:
    return f"| {what} | {before:,} | {after:,} | {after / before:.3f} |"


def meta_model(config: Any, widths: bool = True) -> nn.Module:
    """The family's classifier of `config` on the meta device (shapes only, no memory), at the
    config's per-layer widths (`widths=True`) or at the dense widths the rest of it gives."""
    arch = get_architecture(config)
    config = copy.deepcopy(config)
    heads, units = getattr(config, HEADS_KEY, None), getattr(config, UNITS_KEY, None)
    for key in (HEADS_KEY, UNITS_KEY):
        if hasattr(config, key):
            delattr(config, key)
    with torch.device("meta"):
        model = arch.model_cls(config).eval()
    if widths and heads is not None:
        set_widths(model, arch.layout, heads, units)
    return model


def _image_size(config: Any) -> tuple[int, int]:
    size = getattr(getattr(config, "vision_config", config), "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def count_macs(model: nn.Module) -> int:
    """Multiply-adds of one image through `model` (Linear, Conv2d, attention products)."""
    layout = get_architecture(model).layout
    total = [0]

    def linear(module, args, output):
        total[0] += output.numel() // module.out_features * module.in_features * module.out_features

    def conv(module, args, output):
        k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total[0] += output.numel() * k

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv))
    for block in transformer_layers(model, layout).values():
        width = get_submodule(block, layout.query).out_features

        def attention(module, args, kwargs, width=width):
            hidden = args[0] if args else kwargs["hidden_states"]
            sequences, tokens = hidden.shape[0], hidden.shape[1]
            total[0] += 2 * sequences * tokens * tokens * width

        target = get_submodule(block, layout.attention)
        handles.append(target.register_forward_pre_hook(attention, with_kwargs=True))
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(pixel_values=torch.zeros(1, 3, *_image_size(model.config), device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _prunable(model: nn.Module) -> int:
    return sum(
        m.weight.numel()
        for block in encoder_blocks(model).values()
        for m in block.modules()
        if isinstance(m, nn.Linear)
    )


def structure_report(config: Any) -> StructureReport:
    """The `StructureReport` of a structurally pruned model config (dense widths from the rest
    of the config)."""
    dense, small = meta_model(config, widths=False), meta_model(config, widths=True)
    layout = get_architecture(config).layout
    heads_before, units_before = layer_widths(dense, layout)
    heads_after, units_after = layer_widths(small, layout)
    return StructureReport(
        blocks=list(transformer_layers(small, layout)),
        heads_before=heads_before,
        heads_after=heads_after,
        units_before=units_before,
        units_after=units_after,
        prunable_before=_prunable(dense),
        prunable_after=_prunable(small),
        params_before=sum(p.numel() for p in dense.parameters()),
        params_after=sum(p.numel() for p in small.parameters()),
        macs_before=count_macs(dense),
        macs_after=count_macs(small),
    )


def structure_card_section(report: StructureReport, structure: str | None = None) -> str:
    """The model card's markdown about a structurally pruned model (widths, size, MACs)."""
    kind = {"mlp": "MLP hidden units", "heads": "attention heads"}.get(
        structure or "", "attention heads and MLP hidden units"
    )
    return "\n".join(
        [
            "## Structure",
            "",
            f"Whole {kind} were removed before fine-tuning: {report.sparsity:.1%} of the prunable "
            "encoder Linear weights are gone, and the model is a smaller dense model of the same "
            f"transformers class ({report.params_after / report.params_before:.1%} of the "
            f"parameters, {report.macs_after / report.macs_before:.1%} of the multiply-adds per "
            "image). Its config records the widths per block (`layer_num_attention_heads`, "
            "`layer_intermediate_sizes`); `hf_afr.AFRPruner.from_pretrained` loads it.",
            "",
            report.to_markdown(),
        ]
    )
