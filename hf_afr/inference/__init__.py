"""Inference of pruned models: exact structural shrinking and per-layer sparse kernels."""

from .config import SparseInferenceConfig
from .convert import to_sparse_inference
from .guard import InferenceOnlyError, is_inference_only
from .kernels import SparseLinear, module_bytes
from .report import BlockShrink, InferenceReport, LayerChoice, ShrinkReport
from .shrink import shrink, shrinkable

__all__ = [
    "BlockShrink",
    "InferenceOnlyError",
    "InferenceReport",
    "LayerChoice",
    "ShrinkReport",
    "SparseInferenceConfig",
    "SparseLinear",
    "is_inference_only",
    "module_bytes",
    "shrink",
    "shrinkable",
    "to_sparse_inference",
]
