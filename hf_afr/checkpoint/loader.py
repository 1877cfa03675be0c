"""Transparent `from_pretrained` of compact checkpoints, registered when `hf_afr` is imported.

A compact checkpoint's `config.json` declares `quantization_config.quant_method = "hf_afr_compact"`.
This module registers a transformers quantizer for that method which:

1. points transformers at `model.compact.safetensors` (the config's `transformers_weights` holds an
   error message for plain transformers, which refuses it: loading without hf_afr fails loudly);
2. validates the whole file (structure, dtypes, every mask's popcount) before any weight is read;
3. rebuilds each pruned weight from its three stored tensors with a weight converter, after
   transformers' own key renaming (4.x names on disk -> 5.x module names);
4. drops the quantization state afterwards: the loaded model is a plain dense model with zeros in
   the pruned places (`save_pretrained` writes a standard checkpoint, `Trainer` trains it).

Depends on transformers internals that exist in 5.24 (the version it was tested with):
`transformers.quantizers.auto.register_quantizer` / `register_quantization_config`, the
`HfQuantizer` hooks `update_attn_implementation`, `_process_model_before_weight_loading`
(`checkpoint_files`), `get_load_operations` + `serialized_names`, the `dequantize` clean-up in
`postprocess_model`, `transformers.core_model_loading.ConversionOps`, and the `transformers_weights`
config attribute. If they are missing, a warning is logged and loading a compact checkpoint keeps
failing loudly; `hf-afr densify` still converts it (it needs only this module's file reader).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from transformers.utils import logging

from ..untrusted import CheckpointError
from .codec import densify_tensor
from .compact import (
    COMPACT_FORMAT,
    COMPACT_FORMAT_VERSION,
    COMPACT_QUANT_METHOD,
    MASK_SUFFIX,
    PLAIN_LOAD_GUARD,
    SHAPE_SUFFIX,
    SPARSE_SUFFIXES,
    VALUES_SUFFIX,
    check_quantization_config,
    read_compact_weights,
)
from .entries import model_tensors
from .formats import COMPACT_WEIGHTS_NAME, CONFIG_NAME
from .structured_loader import narrow_to_config

logger = logging.get_logger(__name__)

TESTED_TRANSFORMERS = "5.24"

try:
    from transformers.core_model_loading import ConversionOps
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


if _IMPORT_ERROR is None:

    class AFRCompactConfig(QuantizationConfigMixin):
        """`quantization_config` of a compact checkpoint (written by hf_afr, never by users).

        Args:
            weights_file (`str`, defaults to `"model.compact.safetensors"`): the weights file.
            format_version (`int`, defaults to 1): version of the compact format.
        """

        def __init__(
            self,
            weights_file: str = COMPACT_WEIGHTS_NAME,
            format_version: int = COMPACT_FORMAT_VERSION,
            **kwargs: Any,
        ):
            self.quant_method = COMPACT_QUANT_METHOD
            self.format = kwargs.pop("format", COMPACT_FORMAT)
            # The loaded model is dense: transformers then removes the quantization state.
            self.dequantize = True
            # Checked by `check` once the checkpoint's path is known (the quantizer's first hook).
            self.weights_file = weights_file
            self.format_version = format_version

        def check(self, config_path: str) -> None:
            """Raise a `CheckpointError` naming `config_path` for a field hf_afr cannot read."""
            fields = {"weights_file": self.weights_file, "format_version": self.format_version}
            check_quantization_config(fields, config_path)

    class AFRCompactDecode(ConversionOps):
        """Rebuild a dense weight from `weight.afr_values`, `weight.afr_mask`, `weight.afr_shape`."""

        def __init__(self, hf_quantizer: AFRCompactQuantizer):
            self.hf_quantizer = hf_quantizer

        def __deepcopy__(self, memo: dict) -> AFRCompactDecode:
            # transformers copies the converter per tensor: share the quantizer's bookkeeping.
            return type(self)(self.hf_quantizer)

        def convert(
            self,
            input_dict: dict[str, Any],
            source_patterns: list[str] | None = None,
            target_patterns: list[str] | None = None,
            full_layer_name: str | None = None,
            model: torch.nn.Module | None = None,
            **kwargs: Any,
        ) -> dict[str, torch.Tensor]:
            # Keys are the source patterns, e.g. "weight.afr_values"; values are lists of tensors.
            parts = {
                suffix: tensors[0] if isinstance(tensors, list) else tensors
                for pattern, tensors in input_dict.items()
                for suffix in SPARSE_SUFFIXES
                if pattern.endswith(suffix[1:])
            }
            name = full_layer_name or "weight"
            if len(parts) != len(SPARSE_SUFFIXES):
                raise ValueError(
                    f"Compact tensor {name!r} is incomplete: found {sorted(parts)} of the values, "
                    "mask and shape."
                )
            dtype = None
            if model is not None and full_layer_name is not None:
                with contextlib.suppress(AttributeError):
                    param = model.get_parameter(full_layer_name)
                    dtype = param.dtype
                    stored = parts[SHAPE_SUFFIX]
                    if stored.dim() != 1 or stored.tolist() != list(param.shape):
                        raise CheckpointError(
                            self.hf_quantizer.weights_path,
                            name + SHAPE_SUFFIX,
                            f"declares {stored.tolist()}, the model expects {list(param.shape)}.",
                        )
            dense = densify_tensor(
                parts[VALUES_SUFFIX],
                parts[MASK_SUFFIX],
                parts[SHAPE_SUFFIX],
                name=name,
                dtype=dtype,
            )
            self.hf_quantizer.decoded.add(name)
            return {name: dense}

    class AFRCompactQuantizer(HfQuantizer):
        """Loads hf_afr compact checkpoints as dense models (see the module docstring)."""

        requires_calibration = False
        serialized_names = {"weight": [f"weight{suffix}" for suffix in SPARSE_SUFFIXES]}

        def __init__(self, quantization_config: AFRCompactConfig, **kwargs: Any):
            super().__init__(quantization_config, **kwargs)
            self.decoded: set[str] = set()
            self.expected = 0
            self.weights_path = COMPACT_WEIGHTS_NAME

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            if not self.pre_quantized:
                raise ValueError(
                    "`hf_afr_compact` is a checkpoint format, not a way to quantize a model: save a "
                    "pruned model with `AFRPruner.save_pretrained(..., checkpoint_format='compact')`."
                )

        def update_attn_implementation(self, config):
            folder = getattr(config, "name_or_path", "") or ""
            self.quantization_config.check(os.path.join(folder, CONFIG_NAME))
            # Runs before transformers resolves the weight files: swap the guard for the real name.
            if getattr(config, "transformers_weights", None) in (None, PLAIN_LOAD_GUARD):
                config.transformers_weights = self.quantization_config.weights_file
            return config

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            files = [f for f in checkpoint_files or [] if f is not None]
            if len(files) != 1:
                raise ValueError(
                    f"A compact checkpoint has one weights file ({COMPACT_WEIGHTS_NAME}), got {files}."
                )
            narrow_to_config(model, files)  # a structured model: its widths first
            # Every entry is checked against the model before any mask is decoded.
            self.weights_path = files[0]
            expected = model_tensors(model)
            _, _, entries = read_compact_weights(files[0], load_values=False, expected=expected)
            self.expected = len(entries)
            return model

        def get_load_operations(self) -> dict:
            return {"deserialize": AFRCompactDecode, "dequantize": AFRCompactDecode}

        def update_weight_conversions(self, weight_conversions, model):
            # A one-to-many converter of the model's own mapping (DINOv2's `mlp.weights_in` ->
            # gate/up split) cannot also collect the compact companions, and hf_afr writes no such
            # keys: keep it as it is. (A file that had them fails the count check after loading.)
            splits = [
                c
                for c in weight_conversions
                if len(getattr(c, "_original_target_patterns", ())) > 1
                and getattr(c, "operations", None)
            ]
            others = [c for c in weight_conversions if not any(c is s for s in splits)]
            return splits + super().update_weight_conversions(others, model)

        def _process_model_after_weight_loading(self, model, **kwargs):
            if len(self.decoded) != self.expected:
                raise ValueError(
                    f"Only {len(self.decoded)} of the {self.expected} pruned tensors of the compact "
                    f"checkpoint were loaded: this transformers version is not compatible with hf_afr's "
                    f"loader (tested with {TESTED_TRANSFORMERS}). Convert the checkpoint with "
                    "`hf-afr densify SRC DST` and load the dense copy."
                )
            for config in {
                id(m.config): m.config for m in model.modules() if hasattr(m, "config")
            }.values():
                if hasattr(config, "transformers_weights"):
                    delattr(config, "transformers_weights")
            return model

        def is_serializable(self) -> bool:
            return True

        @property
        def is_trainable(self) -> bool:
            return True


def register() -> None:
    """Register the compact loader with transformers (idempotent; done by `import hf_afr`)."""
    if _IMPORT_ERROR is not None:
        logger.warning(
            f"hf_afr cannot register its compact-checkpoint loader with this transformers version "
            f"({_IMPORT_ERROR}); tested with transformers {TESTED_TRANSFORMERS}. Compact checkpoints "
            "can still be converted with `hf-afr densify`."
        )
        return
    if COMPACT_QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(COMPACT_QUANT_METHOD)(AFRCompactConfig)
    if COMPACT_QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(COMPACT_QUANT_METHOD)(AFRCompactQuantizer)
