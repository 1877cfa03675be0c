"""The compact checkpoint file: every pruned tensor stored as an encoded mask plus its kept values.

Layout of `model.compact.safetensors` (safetensors only, never pickle). Tensors keep the key names
`save_pretrained` writes, so transformers' own key renaming applies on load:

- an unpruned tensor is stored as is, under its usual key (e.g. `vit.layernorm.weight`);
- a pruned weight `K` becomes three tensors:
  - `K.afr_values`: the kept weights in row-major order, 1-D, in the model's dtype (kept zeros too,
    so the mask survives exactly),
  - `K.afr_mask`: the mask as uint8 bytes, first byte = code (see `mask_codec`),
  - `K.afr_shape`: the dense shape (int64).
- the safetensors metadata holds `format`, `format_version` and, as JSON, one entry per pruned
  tensor: parameter name, shape, dtype, number of kept values and mask encoding.

The folder's `config.json` declares `quantization_config = {"quant_method": "hf_afr_compact", ...}`
and a `transformers_weights` entry that plain transformers rejects with an error telling to install
hf_afr: without hf_afr, loading fails loudly instead of returning random weights. `import hf_afr`
registers the loader (`hf_afr.checkpoint.loader`) that makes `from_pretrained` read the file.
`read_compact_weights` is the one reader; it validates everything it returns.
"""

from __future__ import annotations

import copy
import json
import math
import os
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_path, atomic_write_text
from ..untrusted import CheckpointError, check_int
from ..version import __version__
from .codec import (
    MASK_ENCODINGS,
    STORED_DTYPES,
    compact_tensor,
    decode_positions,
    densify_with_positions,
)
from .entries import (  # noqa: F401 - the suffixes are re-exported
    MASK_SUFFIX,
    SHAPE_SUFFIX,
    SPARSE_SUFFIXES,
    VALUES_SUFFIX,
    CompactEntry,
    ModelTensors,
    check_against_model,
    check_parts,
    disk_state_dict,
    parse_entries,
)
from .formats import COMPACT_QUANT_METHOD, COMPACT_WEIGHTS_NAME, CONFIG_NAME

COMPACT_FORMAT = "hf_afr.compact"
COMPACT_FORMAT_VERSION = 1


# Plain transformers refuses a `transformers_weights` entry that is not a *.safetensors file name and
# prints it in its error message; hf_afr's loader swaps in the real file name.
PLAIN_LOAD_GUARD = (
    f"{COMPACT_WEIGHTS_NAME} holds an hf_afr compact sparse checkpoint: install hf_afr from its "
    "repository (`pip install .` in a clone) and `import hf_afr` before `from_pretrained`, or "
    "convert it with `hf-afr densify SRC DST`"
)


# --------------------------------------------------------------------------- files


def save_compact_weights(
    model: torch.nn.Module, masks: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Write the model's weights in the compact format to `path` (atomically).

    Args:
        model (`torch.nn.Module`): the pruned model (pruned weights already zero).
        masks (`dict[str, torch.Tensor]`): boolean masks (True = kept) keyed by parameter name.
        path (`str` or `os.PathLike`): the `.safetensors` file to write.

    Returns:
        `dict[str, CompactEntry]`: the metadata entry of every pruned tensor, keyed by disk key.
    """
    on_disk, params = disk_state_dict(model)
    by_param = {param: key for key, param in params.items()}
    missing = sorted(set(masks) - set(by_param))
    if missing:
        raise ValueError(f"Masks for tensors the model does not have: {missing[:5]}.")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, CompactEntry] = {}
    order = {name: i for i, name in enumerate(model.state_dict())}
    for key in sorted(on_disk, key=lambda k: order.get(params[k], len(order))):
        tensor, param = on_disk[key], params[key]
        if param not in masks:
            tensors[key] = tensor.detach().cpu().contiguous()
            continue
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in STORED_DTYPES:
            raise ValueError(
                f"{param!r} is {dtype}; compact checkpoints store {', '.join(STORED_DTYPES)} weights."
            )
        parts = dict(zip(SPARSE_SUFFIXES, compact_tensor(tensor, masks[param], param)))
        tensors.update({key + suffix: t for suffix, t in parts.items()})
        entries[key] = CompactEntry(
            key=key,
            param=param,
            shape=tuple(tensor.shape),
            dtype=dtype,
            nnz=parts[VALUES_SUFFIX].numel(),
            encoding=MASK_ENCODINGS[int(parts[MASK_SUFFIX][0])],
            crc32=zlib.crc32(parts[MASK_SUFFIX].numpy().tobytes()),
        )
    metadata = {
        "format": COMPACT_FORMAT,
        "format_version": str(COMPACT_FORMAT_VERSION),
        "hf_afr_version": __version__,
        "sparse_tensors": json.dumps(
            {
                key: {
                    "param": e.param,
                    "shape": list(e.shape),
                    "dtype": e.dtype,
                    "nnz": e.nnz,
                    "encoding": e.encoding,
                    "crc32": e.crc32,
                }
                for key, e in entries.items()
            }
        ),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return entries


def read_compact_header(
    path: str | os.PathLike, expected: ModelTensors | None = None, strict: bool = False
) -> dict[str, CompactEntry]:
    """Read and check the structure of a compact weights file, without decoding the masks.

    Checks: the file is complete safetensors, the format and version are known, every metadata
    field is typed and in range, every pruned tensor has its three parts with the declared dtypes
    and sizes, no part is orphaned; with `expected`, every entry is a tensor of the model with
    its parameter name and shape. Only the small shape tensors are read.

    Args:
        path (`str` or `os.PathLike`): the `model.compact.safetensors` file.
        expected (`dict`, *optional*): `{disk key: (parameter, shape)}` of the model the file is
            for (`entries.model_tensors`). Pass it for files from others: it bounds what the
            declared shapes may allocate by the model's own size.
        strict (`bool`, defaults to `False`): with `expected`, also check the shapes of the
            tensors stored dense (off when loading, where a head may be resized).

    Raises:
        CheckpointError: with the field, for a truncated, foreign, inconsistent or hostile file.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            info = {}
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = f.get_slice(k)
                info[k] = (part.get_dtype(), tuple(part.get_shape()))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            path,
            None,
            f"cannot be read ({err}). The file is truncated or is not a safetensors file; "
            "re-save or re-download it.",
        ) from err
    if metadata.get("format") != COMPACT_FORMAT:
        raise CheckpointError(
            path,
            "metadata.format",
            f"is {str(metadata.get('format'))[:40]!r}: not an hf_afr compact checkpoint "
            f"(expected {COMPACT_FORMAT!r}).",
        )
    version = str(metadata.get("format_version", ""))
    if version not in {str(v) for v in range(1, COMPACT_FORMAT_VERSION + 1)}:
        raise CheckpointError(
            path,
            "metadata.format_version",
            f"is {version[:20]!r}; this hf_afr reads version {COMPACT_FORMAT_VERSION}. Upgrade "
            "hf_afr.",
        )
    entries = parse_entries(path, metadata.get("sparse_tensors"))
    if expected is not None:
        dense = {k: shape for k, (_, shape) in info.items() if not k.endswith(SPARSE_SUFFIXES)}
        check_against_model(path, entries, dense if strict else {}, expected)
    for entry in entries.values():
        check_parts(path, entry, info)
    orphans = sorted(
        k for k in info if k.endswith(SPARSE_SUFFIXES) and k.rsplit(".", 1)[0] not in entries
    )
    if orphans:
        raise CheckpointError(
            path, orphans[0], f"tensors {orphans[:3]} are not declared in the metadata."
        )
    with safe_open(path, framework="pt") as f:
        for key, entry in entries.items():
            stored = f.get_tensor(key + SHAPE_SUFFIX).tolist()
            if stored != list(entry.shape):
                raise CheckpointError(
                    path,
                    key + SHAPE_SUFFIX,
                    f"{key!r} stores shape {stored}, the metadata declares {list(entry.shape)}.",
                )
    return entries


def read_compact_weights(
    path: str | os.PathLike,
    load_values: bool = True,
    expected: ModelTensors | None = None,
    strict: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, CompactEntry]]:
    """Read and fully validate a compact weights file: structure, dtypes and every mask.

    Every declared size is checked (`read_compact_header`) before it sizes an allocation, and
    every mask is decompressed with a bound derived from its checked shape.

    Args:
        path (`str` or `os.PathLike`): the `model.compact.safetensors` file.
        load_values (`bool`, defaults to `True`): also rebuild the dense tensors; with `False`
            only the masks are decoded (enough to validate the file or to read its masks).
        expected (`dict`, *optional*): `{disk key: (parameter, shape)}` of the model the file
            is for; see `read_compact_header`.
        strict (`bool`, defaults to `False`): see `read_compact_header`.

    Returns:
        `(state_dict, masks, entries)`: the dense tensors under their disk keys (empty without
        `load_values`), the masks (True = kept) keyed by parameter name, and the metadata entries
        keyed by disk key.

    Raises:
        CheckpointError: (a `ValueError`) for a truncated, foreign, inconsistent or hostile file.
    """
    path = os.fspath(path)
    entries = read_compact_header(path, expected, strict)
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt") as f:
        names = f.keys()
        if load_values:
            state = {k: f.get_tensor(k) for k in names if not k.endswith(SPARSE_SUFFIXES)}
        for key, entry in entries.items():
            field = key + MASK_SUFFIX
            data = f.get_tensor(field).numpy().tobytes()
            if MASK_ENCODINGS.get(data[0]) != entry.encoding:
                raise CheckpointError(
                    path,
                    field,
                    f"the mask of {key!r} is coded as {MASK_ENCODINGS.get(data[0], data[0])!r}, "
                    f"the metadata declares {entry.encoding!r}.",
                )
            if entry.crc32 is not None and zlib.crc32(data) != entry.crc32:
                raise CheckpointError(
                    path,
                    field,
                    f"Corrupt mask for {entry.param!r}: its bytes fail their CRC-32 check; "
                    "re-save or re-download the file.",
                )
            try:
                if load_values:
                    values = f.get_tensor(key + VALUES_SUFFIX)
                    state[key], positions = densify_with_positions(
                        values, data, entry.shape, entry.param
                    )
                else:
                    positions = decode_positions(data, entry.numel, entry.nnz, entry.param)
            except ValueError as err:
                raise CheckpointError(path, field, str(err)) from None
            mask = np.zeros(entry.numel, dtype=bool)
            mask[positions] = True
            masks[entry.param] = torch.from_numpy(mask).view(entry.shape)
    return state, masks, entries


def information_bound(entries: Mapping[str, CompactEntry], dense_value_bytes: int = 0) -> float:
    """Bytes needed at least: every stored value plus `n * H(p) / 8` for the masks.

    `p` is the density over all pruned tensors together; `dense_value_bytes` counts the tensors
    stored dense (their values are all kept).
    """
    numel = sum(e.numel for e in entries.values())
    nnz = sum(e.nnz for e in entries.values())
    value_bytes = sum(e.nnz * STORED_DTYPES[e.dtype][0].itemsize for e in entries.values())
    p = nnz / numel if numel else 0.0
    entropy = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return dense_value_bytes + value_bytes + numel * entropy / 8


# --------------------------------------------------------------------------- folders


def check_quantization_config(quantization: Mapping, config_path: str = CONFIG_NAME) -> None:
    """Check the fields hf_afr reads from a compact checkpoint's `quantization_config`.

    Raises:
        CheckpointError: naming `config_path` and the field.
    """
    name = quantization.get("weights_file", COMPACT_WEIGHTS_NAME)
    if (
        not isinstance(name, str)
        or os.path.basename(name) != name
        or name in ("", ".", "..")
        or not name.endswith(".safetensors")
    ):
        raise CheckpointError(
            config_path,
            "quantization_config.weights_file",
            f"is {str(name)[:60]!r}; expected a *.safetensors file name inside the checkpoint "
            "folder.",
        )
    field = "quantization_config.format_version"
    version = check_int(quantization.get("format_version"), config_path, field, 1, 2**31)
    if version > COMPACT_FORMAT_VERSION:
        raise CheckpointError(
            config_path,
            field,
            f"is {version}; this hf_afr reads version {COMPACT_FORMAT_VERSION}. Upgrade hf_afr.",
        )


def compact_config_dict(model: torch.nn.Module) -> dict:
    """`config.json` content of a compact checkpoint: the model config plus the loading guard."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    for attr in ("quantization_config", "transformers_weights"):
        if hasattr(config, attr):
            delattr(config, attr)
    data = json.loads(config.to_json_string(use_diff=True))
    data["quantization_config"] = {
        "quant_method": COMPACT_QUANT_METHOD,
        "format": COMPACT_FORMAT,
        "format_version": COMPACT_FORMAT_VERSION,
        "weights_file": COMPACT_WEIGHTS_NAME,
    }
    data["transformers_weights"] = PLAIN_LOAD_GUARD
    return data


def save_compact_checkpoint(
    model: torch.nn.Module, masks: Mapping[str, torch.Tensor], save_directory: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Write `model.compact.safetensors` and `config.json` (in that order, each atomically)."""
    if not masks:
        raise ValueError("A compact checkpoint needs the pruning masks: prune the model first.")
    save_directory = os.fspath(save_directory)
    os.makedirs(save_directory, exist_ok=True)
    entries = save_compact_weights(model, masks, os.path.join(save_directory, COMPACT_WEIGHTS_NAME))
    text = json.dumps(compact_config_dict(model), indent=2, sort_keys=True) + "\n"
    atomic_write_text(os.path.join(save_directory, CONFIG_NAME), text)
    return entries
