"""Structured pruning: whole attention heads and MLP hidden units, leaving a smaller dense model.

`slicing` removes given heads/units from a block (torch and transformers only); the family's
attribute names come from its `hf_afr.architectures.VisionArchitecture.layout`.
"""

from .slicing import (
    BlockLayout,
    keep_heads,
    keep_units,
    layer_widths,
    prune_heads,
    prune_units,
    set_widths,
    transformer_layers,
)

__all__ = [
    "BlockLayout",
    "keep_heads",
    "keep_units",
    "layer_widths",
    "prune_heads",
    "prune_units",
    "set_widths",
    "transformer_layers",
]
