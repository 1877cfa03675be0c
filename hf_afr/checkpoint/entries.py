"""What a compact file declares about its pruned tensors, checked before anything is allocated.

`parse_entries` reads the `sparse_tensors` metadata (bounded JSON, every field typed and in
range); `check_parts` checks the three stored tensors of each entry from their headers;
`check_against_model` compares the entries with the tensors of the model they are loaded
into (`model_tensors`): every entry must be a tensor of the model, name that tensor's parameter,
and declare its shape. Only then do the declared sizes size an allocation, so the cost of reading
a file is bounded by the file and the model, never by what the file claims.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..untrusted import CheckpointError, check_int, check_shape, describe, parse_json
from .codec import ENCODING_IDS, STORED_DTYPES

# A pruned weight `K` is stored as `K.afr_values`, `K.afr_mask` and `K.afr_shape` (see `compact`).
VALUES_SUFFIX = ".afr_values"
MASK_SUFFIX = ".afr_mask"
SHAPE_SUFFIX = ".afr_shape"
SPARSE_SUFFIXES = (VALUES_SUFFIX, MASK_SUFFIX, SHAPE_SUFFIX)

ENTRY_FIELDS = ("param", "shape", "dtype", "nnz", "encoding")
"""Fields every entry of `sparse_tensors` has; `crc32` (of the mask bytes) is optional."""


@dataclass(frozen=True)
class CompactEntry:
    """What the metadata declares about one pruned tensor.

    `crc32` is the CRC-32 of the stored mask bytes; files written before it existed have `None`.
    """

    key: str
    param: str
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    encoding: str
    crc32: int | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


ModelTensors = Mapping[str, tuple[str, tuple[int, ...]]]
"""`{disk key: (parameter name, shape)}` of the tensors of a model."""


def disk_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict under the key names `save_pretrained` writes, and `{disk key: param name}`.

    transformers 5 renamed ViT modules but keeps writing the 4.x key names; using the same
    mapping makes compact files load through transformers' own renaming, like dense ones.
    """
    state = {k: v for k, v in model.state_dict().items()}
    try:
        from transformers.core_model_loading import revert_weight_conversion

        on_disk = revert_weight_conversion(model, dict(state))
    except ImportError:  # older or newer transformers: module names are the disk names
        on_disk = dict(state)
    names = {id(t): k for k, t in state.items()}
    return on_disk, {key: names.get(id(t), key) for key, t in on_disk.items()}


def model_tensors(model: torch.nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`{disk key: (parameter name, shape)}` of a model (works on the meta device too)."""
    on_disk, params = disk_state_dict(model)
    return {key: (params[key], tuple(t.shape)) for key, t in on_disk.items()}


def parse_entries(path: str | os.PathLike, text: str | None) -> dict[str, CompactEntry]:
    """The entries of the `sparse_tensors` metadata, every field checked.

    Raises:
        CheckpointError: naming the file and the field that is missing, mistyped or out of range.
    """
    field = "metadata.sparse_tensors"
    if not isinstance(text, str):
        raise CheckpointError(path, field, "is missing; the file is not a complete compact file.")
    declared = parse_json(text, path, field)
    if not isinstance(declared, dict):
        raise CheckpointError(path, field, f"must be a JSON object, got {describe(declared)}.")
    entries = {}
    params: dict[str, str] = {}
    for key, d in declared.items():
        where = f"{field}[{key!r}]"
        if not isinstance(d, dict) or any(f not in d for f in ENTRY_FIELDS):
            raise CheckpointError(
                path, where, f"must be an object with the fields {', '.join(ENTRY_FIELDS)}."
            )
        for name in ("param", "dtype", "encoding"):
            if not isinstance(d[name], str):
                raise CheckpointError(
                    path, f"{where}.{name}", f"must be a string, got {describe(d[name])}."
                )
        if d["dtype"] not in STORED_DTYPES:
            raise CheckpointError(
                path, f"{where}.dtype", f"declares unsupported dtype {describe(d['dtype'])}."
            )
        if d["encoding"] not in ENCODING_IDS:
            raise CheckpointError(
                path,
                f"{where}.encoding",
                f"declares unknown mask encoding {describe(d['encoding'])}.",
            )
        shape = check_shape(d["shape"], path, f"{where}.shape")
        nnz = check_int(d["nnz"], path, f"{where}.nnz", 0, math.prod(shape))
        crc = d.get("crc32")
        crc = None if crc is None else check_int(crc, path, f"{where}.crc32", 0, 2**32 - 1)
        if d["param"] in params:
            raise CheckpointError(
                path,
                f"{where}.param",
                f"names {d['param']!r}, as the entry {params[d['param']]!r} does: each parameter "
                "is stored once.",
            )
        params[d["param"]] = key
        entries[key] = CompactEntry(key, d["param"], shape, d["dtype"], nnz, d["encoding"], crc)
    return entries


def check_against_model(
    path: str | os.PathLike,
    entries: Mapping[str, CompactEntry],
    stored: Mapping[str, tuple[int, ...]],
    expected: ModelTensors,
) -> None:
    """Check the entries (and the tensors stored dense) against the model's tensors.

    Args:
        path: the file, for messages.
        entries: the parsed entries, keyed by disk key.
        stored: `{key: shape}` of the tensors stored dense (not parts of a pruned tensor).
        expected: `model_tensors` of the model built from `config.json`.

    Raises:
        CheckpointError: an entry that is not a tensor of the model, that names another
            parameter than its key's, or that declares another shape.
    """
    for key, entry in entries.items():
        where = f"metadata.sparse_tensors[{key!r}]"
        if key not in expected:
            raise CheckpointError(
                path,
                where,
                "is not a tensor of the model built from config.json; the weights do not belong "
                "to this config.",
            )
        param, shape = expected[key]
        if entry.param != param:
            raise CheckpointError(
                path,
                f"{where}.param",
                f"names {entry.param!r}, but this tensor is the model's {param!r}; the metadata "
                "does not match the weights.",
            )
        if entry.shape != shape:
            raise CheckpointError(
                path,
                f"{where}.shape",
                f"pruned tensor {param!r} has shape {list(entry.shape)} but the model built from "
                f"config.json expects {list(shape)}. The weights do not belong to this config (a "
                "pruned tensor cannot be resized with `ignore_mismatched_sizes`; densify the "
                "checkpoint first).",
            )
    for key, shape in stored.items():
        if key in expected and expected[key][1] != shape:
            raise CheckpointError(
                path,
                key,
                f"has shape {list(shape)} but the model built from config.json expects "
                f"{list(expected[key][1])}; the weights do not belong to this config.",
            )


def check_parts(path: str, entry: CompactEntry, info: Mapping) -> None:
    """Check the three stored parts of an entry against it, from their safetensors headers
    (`info`: `{name: (dtype, shape)}`); nothing is read."""
    key = entry.key
    parts = [key + suffix for suffix in SPARSE_SUFFIXES]
    absent = [p for p in parts if p not in info]
    if absent:
        raise CheckpointError(
            path, absent[0], f"pruned tensor {key!r} lacks {absent}; the file is incomplete."
        )
    if key in info:
        raise CheckpointError(path, key, f"{key!r} is stored both dense and sparse.")
    values_dtype, values_shape = info[key + VALUES_SUFFIX]
    if values_dtype != STORED_DTYPES[entry.dtype][1]:
        raise CheckpointError(
            path,
            key + VALUES_SUFFIX,
            f"values of {key!r} are stored as {values_dtype}, the metadata declares {entry.dtype}.",
        )
    if values_shape != (entry.nnz,):
        raise CheckpointError(
            path,
            key + VALUES_SUFFIX,
            f"{key!r} stores {list(values_shape)} values, the metadata declares {entry.nnz} kept "
            "weights.",
        )
    mask_dtype, mask_shape = info[key + MASK_SUFFIX]
    if mask_dtype != "U8" or len(mask_shape) != 1 or mask_shape[0] < 1:
        raise CheckpointError(
            path, key + MASK_SUFFIX, f"the mask of {key!r} must be non-empty 1-D uint8 bytes."
        )
    shape_dtype, shape_shape = info[key + SHAPE_SUFFIX]
    if shape_dtype != "I64" or shape_shape != (len(entry.shape),):
        raise CheckpointError(
            path,
            key + SHAPE_SUFFIX,
            f"{key!r} stores its shape as {shape_dtype} {list(shape_shape)}, the metadata declares "
            f"{len(entry.shape)} dimensions (int64).",
        )
