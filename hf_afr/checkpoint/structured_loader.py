"""Transparent `from_pretrained` of structurally pruned checkpoints (registered by `import hf_afr`).

A dense-format structured checkpoint's `config.json` declares
`quantization_config = {"quant_method": "hf_afr_structured"}` (see `hf_afr.checkpoint.portable`).
This module registers a transformers quantizer for that method which, on the meta-device model
built from the config and before any weight is read:

1. gives every block the widths `config.layer_num_attention_heads` / `layer_intermediate_sizes`
   record (`hf_afr.checkpoint.widths.apply_config_widths`);
2. checks them against the shapes the weights files declare (one line naming file, layer and
   config field instead of transformers' size-mismatch report);

and afterwards drops the quantization state: the loaded model is a plain model of the family's
class, narrower, trainable with `Trainer`. Same transformers hooks as the compact loader
(`hf_afr.checkpoint.loader`), which applies the widths too for compact structured checkpoints.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .portable import STRUCTURED_QUANT_METHOD
from .widths import apply_config_widths, check_widths_match_weights, weight_file_shapes

try:
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as err:  # pragma: no cover - depends on the installed transformers
    _IMPORT_ERROR: ImportError | None = err
else:
    _IMPORT_ERROR = None


def narrow_to_config(model: nn.Module, checkpoint_files: list[str | None] | None) -> bool:
    """Apply the config's per-layer widths to `model` and check them against the weights files.

    Returns:
        `bool`: whether the config records widths.

    Raises:
        `ValueError`: one line naming the file, layer and config field that disagree.
    """
    if not apply_config_widths(model):
        return False
    for path in [f for f in checkpoint_files or [] if f is not None]:
        if path.endswith(".safetensors"):
            check_widths_match_weights(model, weight_file_shapes(path), path)
    return True


if _IMPORT_ERROR is None:

    class AFRStructuredConfig(QuantizationConfigMixin):
        """`quantization_config` marker of a structured checkpoint (written by hf_afr)."""

        def __init__(self, **kwargs: Any):
            self.quant_method = STRUCTURED_QUANT_METHOD
            # The loaded model is a plain model: transformers then removes the quantization state.
            self.dequantize = True

    class AFRStructuredQuantizer(HfQuantizer):
        """Loads structured checkpoints into the narrowed model (see the module docstring)."""

        requires_calibration = False

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            if not self.pre_quantized:
                raise ValueError(
                    "`hf_afr_structured` marks a structurally pruned checkpoint; it is not a way "
                    "to quantize a model. Prune with `PrunerConfig(structure=...)` instead."
                )

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            if not narrow_to_config(model, checkpoint_files):
                raise ValueError(
                    "config.json declares a structured checkpoint (`hf_afr_structured`) but records "
                    "no per-layer widths (`layer_num_attention_heads`, `layer_intermediate_sizes`)."
                )
            return model

        def is_serializable(self) -> bool:
            return True

        @property
        def is_trainable(self) -> bool:
            return True


def register() -> None:
    """Register the structured loader with transformers (idempotent; done by `import hf_afr`)."""
    if _IMPORT_ERROR is not None:
        return  # the compact loader's registration already warns about this transformers
    if STRUCTURED_QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(STRUCTURED_QUANT_METHOD)(AFRStructuredConfig)
    if STRUCTURED_QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(STRUCTURED_QUANT_METHOD)(AFRStructuredQuantizer)
