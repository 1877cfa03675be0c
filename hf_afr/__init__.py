"""hf_afr: foresight pruning of pretrained Hugging Face vision transformers with SNIP, ReFer and AFR.

The public names below are imported on first use, so that `import hf_afr` (and `hf-afr --help`)
stays fast; `import hf_afr` also makes transformers' `from_pretrained` able to load hf_afr's
compact checkpoints (see `hf_afr.registration`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import registration
from .version import __version__

DEFAULT_MODEL = Path(__file__).resolve().parent / "pretrained" / "tiny-vit-glyphs"
"""The embedded default: a tiny ViT pretrained on rendered glyphs, shipped with the package."""

_LAZY_ATTRIBUTES = {
    "AFRPruner": ".pruner",
    "CheckpointError": ".untrusted",
    "DistillationTrainer": ".distillation",
    "MaskEnforcer": ".enforcement",
    "PrunerConfig": ".config",
    "PrunerConfigCallback": ".resume",
    "PruningMaskCallback": ".enforcement",
    "PrunedCardData": ".checkpoint.card_data",
    "ResumingTrainer": ".resume",
    "SparsityReport": ".report",
    "StructureReport": ".structure.report",
    "count_macs": ".structure.report",
    "structure_report": ".structure.report",
    "SparsityViolationError": ".enforcement",
    "apply_masks": ".masks",
    "distillation_loss": ".distillation",
    "available_criteria": ".criteria",
    "enforce_masks": ".enforcement",
    "find_prunable_parameters": ".targets",
    "get_criterion": ".criteria",
    "register_criterion": ".criteria",
    "SparseInferenceConfig": ".inference",
    "select_masks": ".masks",
    "shrink": ".inference",
    "to_sparse_inference": ".inference",
    "supported_model_types": ".architectures",
}

__all__ = [
    "AFRPruner",
    "CheckpointError",
    "DEFAULT_MODEL",
    "DistillationTrainer",
    "MaskEnforcer",
    "PrunerConfig",
    "PrunerConfigCallback",
    "PruningMaskCallback",
    "PrunedCardData",
    "ResumingTrainer",
    "SparsityReport",
    "SparseInferenceConfig",
    "SparsityViolationError",
    "StructureReport",
    "__version__",
    "apply_masks",
    "distillation_loss",
    "available_criteria",
    "count_macs",
    "enforce_masks",
    "find_prunable_parameters",
    "get_criterion",
    "register_criterion",
    "select_masks",
    "shrink",
    "structure_report",
    "supported_model_types",
    "to_sparse_inference",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from .architectures import supported_model_types
    from .checkpoint.card_data import PrunedCardData
    from .config import PrunerConfig
    from .criteria import available_criteria, get_criterion, register_criterion
    from .distillation import DistillationTrainer, distillation_loss
    from .enforcement import (
        MaskEnforcer,
        PruningMaskCallback,
        SparsityViolationError,
        enforce_masks,
    )
    from .inference import SparseInferenceConfig, shrink, to_sparse_inference
    from .masks import apply_masks, select_masks
    from .pruner import AFRPruner
    from .report import SparsityReport
    from .resume import PrunerConfigCallback, ResumingTrainer
    from .structure.report import StructureReport, count_macs, structure_report
    from .targets import find_prunable_parameters
    from .untrusted import CheckpointError


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_afr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


registration.install()
