"""The masks sidecar of dense checkpoints: one packed bitmask per tensor in safetensors (never pickle)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from ..files import atomic_path
from .formats import MASKS_NAME

__all__ = ["MASKS_NAME", "load_masks", "pack_mask", "save_masks", "unpack_mask"]


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Pack a boolean tensor into uint8 bytes (8 entries per byte, big-endian bit order)."""
    return np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1))


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...], name: str = "mask") -> torch.Tensor:
    """Inverse of `pack_mask`; checks that the byte count fits the shape."""
    numel = int(np.prod(shape)) if shape else 1
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (numel + 7) // 8:
        raise ValueError(
            f"Corrupt mask for {name!r}: expected {(numel + 7) // 8} packed uint8 bytes for shape "
            f"{tuple(shape)}, got {packed.size} of dtype {packed.dtype}."
        )
    bits = np.unpackbits(packed, count=numel).astype(bool)
    return torch.from_numpy(bits).view(shape)


def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write masks atomically to `path` (safetensors, shapes in the metadata)."""
    tensors = {name: pack_mask(m) for name, m in masks.items()}
    shapes = json.dumps({name: list(m.shape) for name, m in masks.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "hf_afr.bitmask", "shapes": shapes})


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read masks written by `save_masks`, validating every entry."""
    try:
        with safe_open(os.fspath(path), framework="np") as f:
            metadata = f.metadata() or {}
        tensors = load_file(os.fspath(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"Cannot read pruning masks from {path}: {err}") from err
    if metadata.get("format") != "hf_afr.bitmask" or "shapes" not in metadata:
        raise ValueError(f"{path} is not an hf_afr mask file (missing 'hf_afr.bitmask' metadata).")
    shapes = json.loads(metadata["shapes"])
    if set(shapes) != set(tensors):
        raise ValueError(f"{path}: the mask names in the metadata do not match the stored tensors.")
    return {name: unpack_mask(tensors[name], tuple(shapes[name]), name) for name in shapes}
