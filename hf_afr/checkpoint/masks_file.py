"""The masks sidecar of dense checkpoints: one packed bitmask per tensor in safetensors (never pickle)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..files import atomic_path
from ..untrusted import CheckpointError, check_shape, describe, parse_json
from .formats import MASKS_NAME

__all__ = ["MASKS_NAME", "load_masks", "pack_mask", "save_masks", "unpack_mask"]


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Pack a boolean tensor into uint8 bytes (8 entries per byte, big-endian bit order)."""
    return np.packbits(mask.detach().cpu().numpy().astype(bool).reshape(-1))


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...], name: str = "mask") -> torch.Tensor:
    """Inverse of `pack_mask`; checks that the byte count fits the shape."""
    numel = math.prod(shape)
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


def load_masks(
    path: str | os.PathLike, model: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Read masks written by `save_masks`, validating every entry before unpacking it.

    Args:
        path (`str` or `os.PathLike`): the `pruning_masks.safetensors` file.
        model (`torch.nn.Module`, *optional*): the model the masks are for; every mask must then
            name one of its parameters and have that parameter's shape.

    Raises:
        CheckpointError: (a `ValueError`) naming the file and the field at fault.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            info = {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = f.get_slice(k)
                info[k] = (part.get_dtype(), tuple(part.get_shape()))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            path, None, f"cannot be read ({err}); re-save or re-download it."
        ) from err
    if metadata.get("format") != "hf_afr.bitmask" or "shapes" not in metadata:
        raise CheckpointError(
            path, "metadata.format", "is not an hf_afr mask file (no 'hf_afr.bitmask' metadata)."
        )
    shapes = parse_json(metadata["shapes"], path, "metadata.shapes")
    if not isinstance(shapes, dict):
        raise CheckpointError(
            path, "metadata.shapes", f"must be a JSON object, got {describe(shapes)}."
        )
    if set(shapes) != set(info):
        odd = sorted(set(shapes) ^ set(info))[0]
        raise CheckpointError(
            path,
            "metadata.shapes",
            f"the mask names in the metadata do not match the stored tensors (e.g. {odd!r}).",
        )
    params = None if model is None else {n: tuple(p.shape) for n, p in model.named_parameters()}
    checked = {}
    for name, value in shapes.items():
        field = f"metadata.shapes[{name!r}]"
        shape = check_shape(value, path, field)
        if params is not None and params.get(name) != shape:
            got = "no such parameter" if name not in params else f"shape {list(params[name])}"
            raise CheckpointError(
                path,
                field,
                f"declares {list(shape)}, but the model has {got}: the masks do not "
                "belong to this model.",
            )
        numel = math.prod(shape)
        if info[name] != ("U8", ((numel + 7) // 8,)):
            dtype, stored = info[name]
            raise CheckpointError(
                path,
                name,
                f"stores {dtype} {list(stored)}; a packed mask of shape {list(shape)} is "
                f"{(numel + 7) // 8} uint8 bytes.",
            )
        checked[name] = shape
    with safe_open(path, framework="np") as f:
        return {
            name: unpack_mask(f.get_tensor(name), shape, name) for name, shape in checked.items()
        }
