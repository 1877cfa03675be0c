"""hf_afr: foresight pruning of pretrained Hugging Face ViTs with SNIP, ReFer and AFR."""

from pathlib import Path

from . import integration  # noqa: F401  (lets transformers load compact checkpoints)
from .config import PrunerConfig
from .criteria import available_criteria, get_criterion, register_criterion
from .enforcement import MaskEnforcer, PruningMaskCallback, SparsityViolationError, enforce_masks
from .inference import SparseInferenceConfig, shrink, to_sparse_inference
from .masks import apply_masks, select_masks
from .pruner import AFRPruner
from .report import SparsityReport
from .targets import find_prunable_parameters

__version__ = "0.1.0"

DEFAULT_MODEL = Path(__file__).resolve().parent / "pretrained" / "tiny-vit-glyphs"
"""The embedded default: a tiny ViT pretrained on rendered glyphs, shipped with the package."""

__all__ = [
    "AFRPruner",
    "DEFAULT_MODEL",
    "MaskEnforcer",
    "PrunerConfig",
    "PruningMaskCallback",
    "SparsityReport",
    "SparseInferenceConfig",
    "SparsityViolationError",
    "__version__",
    "apply_masks",
    "available_criteria",
    "enforce_masks",
    "find_prunable_parameters",
    "get_criterion",
    "register_criterion",
    "select_masks",
    "shrink",
    "to_sparse_inference",
]
