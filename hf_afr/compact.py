"""Compact checkpoints: every pruned tensor stored as an encoded mask plus its kept values.

Layout of `model.compact.safetensors` (safetensors only, never pickle). Tensors keep the key names
`save_pretrained` writes, so transformers' own key renaming applies on load:

- an unpruned tensor is stored as is, under its usual key (e.g. `vit.layernorm.weight`);
- a pruned weight `K` becomes three tensors:
  - `K.afr_values`: the kept weights in row-major order, 1-D, in the model's dtype (kept zeros too,
    so the mask survives exactly),
  - `K.afr_mask`: the mask as uint8 bytes, first byte = encoding (see `MASK_ENCODINGS`),
  - `K.afr_shape`: the dense shape (int64).
- the safetensors metadata holds `format`, `format_version` and, as JSON, one entry per pruned
  tensor: parameter name, shape, dtype, number of kept values and mask encoding.

Masks are coded with whichever of these is smallest: the raw packed bitmask, the zlib-packed
bitmask, or (at low or high density) the gaps between kept (or pruned) positions, one byte per gap
below 255 with 255 as a continuation byte, zlib-compressed. On random masks at 90-98% sparsity the
gap code is within about 1-2% of the mask entropy `n * H(p)`, the zlib-packed bitmask 18-47% above
it and the raw bitmask 2.1-7x.

The folder's `config.json` declares `quantization_config = {"quant_method": "hf_afr_compact", ...}`
and a `transformers_weights` entry that plain transformers rejects with an error telling to install
hf_afr: without hf_afr, loading fails loudly instead of returning random weights. `import hf_afr`
registers the loader (`hf_afr.integration`) that makes `from_pretrained` read the compact file.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .io_utils import atomic_path, atomic_write_text

logger = logging.get_logger(__name__)

COMPACT_WEIGHTS_NAME = "model.compact.safetensors"
COMPACT_FORMAT = "hf_afr.compact"
COMPACT_FORMAT_VERSION = 1
COMPACT_QUANT_METHOD = "hf_afr_compact"
CHECKPOINT_FORMATS = ("dense", "compact")

VALUES_SUFFIX = ".afr_values"
MASK_SUFFIX = ".afr_mask"
SHAPE_SUFFIX = ".afr_shape"
SPARSE_SUFFIXES = (VALUES_SUFFIX, MASK_SUFFIX, SHAPE_SUFFIX)

# Plain transformers refuses a `transformers_weights` entry that is not a *.safetensors file name and
# prints it in its error message; hf_afr's loader swaps in the real file name.
PLAIN_LOAD_GUARD = (
    f"{COMPACT_WEIGHTS_NAME} holds an hf_afr compact sparse checkpoint: run `pip install hf_afr` and "
    "`import hf_afr` before `from_pretrained`, or convert it with `hf-afr densify SRC DST`"
)

MASK_ENCODINGS = {0: "bitmask", 1: "bitmask-zlib", 2: "gaps-zlib", 3: "pruned-gaps-zlib"}
_ENCODING_IDS = {name: code for code, name in MASK_ENCODINGS.items()}
# Gap coding is tried only where it can win: few kept (or few pruned) weights.
_GAP_CODING_MAX_FRACTION = 0.25

_DTYPES = {
    "float32": (torch.float32, "F32"),
    "float16": (torch.float16, "F16"),
    "bfloat16": (torch.bfloat16, "BF16"),
    "float64": (torch.float64, "F64"),
}

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}

# Files of one format that must not survive a save in the other format.
DENSE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
DENSE_WEIGHT_PATTERNS = (*DENSE_WEIGHT_FILES, "model-*-of-*.safetensors")


@dataclass(frozen=True)
class CompactEntry:
    """What the metadata declares about one pruned tensor."""

    key: str
    param: str
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    encoding: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# --------------------------------------------------------------------------- mask coding


def _gaps(positions: np.ndarray) -> bytes:
    """Gaps before each position, one byte each below 255, 255 meaning "add 255 and go on"."""
    gaps = np.diff(positions, prepend=-1) - 1
    full, rest = np.divmod(gaps, 255)
    out = np.full(int((full + 1).sum()), 255, dtype=np.uint8)
    out[np.cumsum(full + 1) - 1] = rest
    return out.tobytes()


def _ungaps(data: bytes, numel: int, name: str) -> np.ndarray:
    """Positions coded by `_gaps`; checks that the code is complete and stays inside the tensor."""
    codes = np.frombuffer(data, dtype=np.uint8)
    if len(codes) and codes[-1] == 255:
        raise ValueError(f"Corrupt mask for {name!r}: the gap code is truncated.")
    ends = np.flatnonzero(codes != 255)
    sums = np.cumsum(codes, dtype=np.int64)[ends]
    positions = np.cumsum(np.diff(sums, prepend=0) + 1) - 1
    if len(positions) and positions[-1] >= numel:
        raise ValueError(
            f"Corrupt mask for {name!r}: position {int(positions[-1])} is outside a tensor of "
            f"{numel} weights."
        )
    return positions


def _deflate(data: bytes) -> bytes:
    """The smaller of zlib's default and Huffman-only coding (both plain zlib streams)."""
    huffman = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    candidates = (zlib.compress(data, 6), huffman.compress(data) + huffman.flush())
    return min(candidates, key=len)


def _inflate(data: bytes, max_size: int, name: str) -> bytes:
    """zlib-decompress at most `max_size` bytes (a corrupt or hostile stream cannot blow up)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size)
    except zlib.error as err:
        raise ValueError(f"Corrupt mask for {name!r}: {err}.") from None
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise ValueError(
            f"Corrupt mask for {name!r}: the compressed mask is truncated or too long."
        )
    return out


def encode_mask(mask: torch.Tensor | np.ndarray) -> tuple[bytes, str]:
    """Encode a boolean mask (True = kept) as bytes, choosing the smallest encoding.

    Returns:
        `(data, encoding)`: the bytes (first byte = encoding id) and the encoding name.
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return _encode(np.asarray(mask, dtype=bool).reshape(-1))


def _encode(bits: np.ndarray, positions: np.ndarray | None = None) -> tuple[bytes, str]:
    packed = np.packbits(bits).tobytes()
    candidates = {"bitmask": packed}
    kept = len(positions) if positions is not None else np.count_nonzero(bits)
    density = kept / bits.size if bits.size else 0.0
    # Gap coding wins where few weights are kept (or pruned); zlib on the bitmask in between.
    if density <= _GAP_CODING_MAX_FRACTION:
        positions = np.flatnonzero(bits) if positions is None else positions
        candidates["gaps-zlib"] = _deflate(_gaps(positions))
    elif density >= 1.0 - _GAP_CODING_MAX_FRACTION:
        candidates["pruned-gaps-zlib"] = _deflate(_gaps(np.flatnonzero(~bits)))
    else:
        candidates["bitmask-zlib"] = zlib.compress(packed, 6)
    encoding = min(candidates, key=lambda k: len(candidates[k]))
    return bytes([_ENCODING_IDS[encoding]]) + candidates[encoding], encoding


def decode_positions(data: bytes, numel: int, nnz: int, name: str = "mask") -> np.ndarray:
    """Decode `encode_mask` bytes into the sorted flat positions of the kept entries (int64).

    Raises:
        ValueError: if the bytes are corrupt, truncated, or the number of kept entries is not `nnz`.
    """
    if not data or data[0] not in MASK_ENCODINGS:
        code = data[0] if data else None
        raise ValueError(f"Corrupt mask for {name!r}: unknown mask encoding {code!r}.")
    encoding, payload = MASK_ENCODINGS[data[0]], data[1:]
    n_bytes = (numel + 7) // 8
    if encoding in ("bitmask", "bitmask-zlib"):
        if encoding == "bitmask-zlib":
            payload = _inflate(payload, n_bytes, name)
        if len(payload) != n_bytes:
            raise ValueError(
                f"Corrupt mask for {name!r}: {len(payload)} bitmask bytes for {numel} weights "
                f"(expected {n_bytes}); the file is truncated or does not match the shape."
            )
        packed = np.frombuffer(payload, dtype=np.uint8)
        if numel % 8 and packed[-1] & ((1 << (8 - numel % 8)) - 1):
            raise ValueError(f"Corrupt mask for {name!r}: padding bits are set.")
        positions = np.flatnonzero(np.unpackbits(packed, count=numel))
    else:
        # At most one byte per position plus one per 255 skipped weights.
        payload = _inflate(payload, numel + numel // 255 + 1, name)
        positions = _ungaps(payload, numel, name)
        if encoding == "pruned-gaps-zlib":
            bits = np.ones(numel, dtype=bool)
            bits[positions] = False
            positions = np.flatnonzero(bits)
    if len(positions) != nnz:
        raise ValueError(
            f"Corrupt compact tensor {name!r}: the mask keeps {len(positions)} weights but {nnz} "
            "values are stored."
        )
    return positions.astype(np.int64, copy=False)


def decode_mask(data: bytes, numel: int, nnz: int, name: str = "mask") -> np.ndarray:
    """Decode `encode_mask` bytes into a flat boolean array of `numel` entries (True = kept).

    Raises:
        ValueError: if the bytes are corrupt, truncated, or the number of kept entries is not `nnz`.
    """
    bits = np.zeros(numel, dtype=bool)
    bits[decode_positions(data, numel, nnz, name)] = True
    return bits


# --------------------------------------------------------------------------- tensors


def compact_tensor(weight: torch.Tensor, mask: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """Split a pruned weight into `{suffix: tensor}` for the three stored tensors.

    Raises:
        ValueError: if a pruned position holds a nonzero weight (the format would drop it).
    """
    if mask.shape != weight.shape:
        raise ValueError(
            f"Mask of {name!r} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}."
        )
    flat = weight.detach().cpu().reshape(-1)
    bits = mask.detach().cpu().reshape(-1).numpy().astype(bool, copy=False)
    positions = np.flatnonzero(bits)
    values = flat.index_select(0, torch.from_numpy(positions))
    if _count_nonzero(flat) != _count_nonzero(values):
        raise ValueError(
            f"{name!r} has nonzero weights outside its mask; apply the masks (e.g. "
            "`pruner.set_masks(pruner.masks)`) before saving a compact checkpoint."
        )
    data, _ = _encode(bits, positions)
    return {
        VALUES_SUFFIX: values,
        MASK_SUFFIX: torch.frombuffer(bytearray(data), dtype=torch.uint8),
        SHAPE_SUFFIX: torch.tensor(list(weight.shape), dtype=torch.int64),
    }


def _count_nonzero(t: torch.Tensor) -> int:
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        return int(torch.count_nonzero(t))
    return int(np.count_nonzero(t.numpy()))


def densify_tensor(
    values: torch.Tensor,
    mask_data: torch.Tensor | bytes,
    shape: torch.Tensor | tuple[int, ...],
    name: str = "tensor",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Rebuild the dense weight (zeros where pruned) from the stored values, mask bytes and shape.

    Args:
        values (`torch.Tensor`): the kept values, 1-D.
        mask_data (`torch.Tensor` or `bytes`): the encoded mask (uint8).
        shape (`torch.Tensor` or `tuple`): the dense shape.
        name (`str`): used in error messages.
        dtype (`torch.dtype`, *optional*): dtype of the dense weight; defaults to the values'.
    """
    return _densify(values, mask_data, shape, name, dtype)[0]


def _densify(values, mask_data, shape, name, dtype=None) -> tuple[torch.Tensor, np.ndarray]:
    if isinstance(shape, torch.Tensor):
        if shape.dtype != torch.int64 or shape.dim() != 1:
            raise ValueError(
                f"Corrupt compact tensor {name!r}: the shape must be a 1-D int64 tensor."
            )
        shape = tuple(int(s) for s in shape.tolist())
    if any(s < 0 for s in shape):
        raise ValueError(f"Corrupt compact tensor {name!r}: negative dimension in {shape}.")
    if values.dim() != 1 or not values.is_floating_point():
        raise ValueError(
            f"Corrupt compact tensor {name!r}: values must be a 1-D float tensor, got "
            f"{values.dtype} of shape {tuple(values.shape)}."
        )
    if isinstance(mask_data, torch.Tensor):
        if mask_data.dtype != torch.uint8 or mask_data.dim() != 1:
            raise ValueError(f"Corrupt compact tensor {name!r}: the mask must be 1-D uint8 bytes.")
        mask_data = mask_data.cpu().numpy().tobytes()
    numel = math.prod(shape)
    positions = decode_positions(mask_data, numel, values.numel(), name)
    dtype = dtype or values.dtype
    if values.device.type == "cpu" and dtype in _NUMPY_DTYPES:
        # numpy's zero-filled allocation plus scatter is ~10x faster than torch.zeros on CPU.
        dense_np = np.zeros(numel, dtype=_NUMPY_DTYPES[dtype])
        dense_np[positions] = values.to(dtype).numpy()
        dense = torch.from_numpy(dense_np)
    else:
        dense = torch.zeros(numel, dtype=dtype, device=values.device)
        dense.index_copy_(0, torch.from_numpy(positions).to(values.device), values.to(dtype))
    return dense.view(shape), positions


# --------------------------------------------------------------------------- key names


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
    from . import __version__

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
        if dtype not in _DTYPES:
            raise ValueError(
                f"{param!r} is {dtype}; compact checkpoints store {', '.join(_DTYPES)} weights."
            )
        parts = compact_tensor(tensor, masks[param], param)
        tensors.update({key + suffix: t for suffix, t in parts.items()})
        entries[key] = CompactEntry(
            key=key,
            param=param,
            shape=tuple(tensor.shape),
            dtype=dtype,
            nnz=parts[VALUES_SUFFIX].numel(),
            encoding=MASK_ENCODINGS[int(parts[MASK_SUFFIX][0])],
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
                }
                for key, e in entries.items()
            }
        ),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return entries


def read_compact_header(path: str | os.PathLike) -> dict[str, CompactEntry]:
    """Read and check the structure of a compact weights file, without decoding the masks.

    Checks: the file is complete safetensors, the format and version are known, every pruned
    tensor has its three parts with the declared dtypes and sizes, no part is orphaned.

    Raises:
        ValueError: with the reason, for a truncated, foreign or inconsistent file.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            slices = {k: f.get_slice(k) for k in names}
            info = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
            shapes = {k: f.get_tensor(k) for k in info if k.endswith(SHAPE_SUFFIX)}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"Cannot read the compact checkpoint {path}: {err}. The file is truncated or is not "
            "a safetensors file; re-save or re-download it."
        ) from err
    if metadata.get("format") != COMPACT_FORMAT:
        raise ValueError(
            f"{path} is not an hf_afr compact checkpoint (metadata format is "
            f"{metadata.get('format')!r}, expected {COMPACT_FORMAT!r})."
        )
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        version = -1
    if version < 1 or version > COMPACT_FORMAT_VERSION:
        raise ValueError(
            f"{path} uses compact format version {metadata.get('format_version')!r}; this hf_afr "
            f"reads version {COMPACT_FORMAT_VERSION}. Upgrade hf_afr (`pip install -U hf_afr`)."
        )
    try:
        declared = json.loads(metadata.get("sparse_tensors", ""))
        entries = {
            key: CompactEntry(
                key=key,
                param=str(d["param"]),
                shape=tuple(int(s) for s in d["shape"]),
                dtype=str(d["dtype"]),
                nnz=int(d["nnz"]),
                encoding=str(d["encoding"]),
            )
            for key, d in declared.items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable `sparse_tensors` metadata ({err!r}).") from None
    for entry in entries.values():
        _check_entry(path, entry, info, shapes)
    orphans = sorted(
        k for k in info if k.endswith(SPARSE_SUFFIXES) and k.rsplit(".", 1)[0] not in entries
    )
    if orphans:
        raise ValueError(f"{path}: tensors {orphans[:3]} are not declared in the metadata.")
    return entries


def _check_entry(path: str, entry: CompactEntry, info: dict, shapes: dict) -> None:
    key = entry.key
    parts = [key + suffix for suffix in SPARSE_SUFFIXES]
    absent = [p for p in parts if p not in info]
    if absent:
        raise ValueError(f"{path}: pruned tensor {key!r} lacks {absent}; the file is incomplete.")
    if key in info:
        raise ValueError(f"{path}: {key!r} is stored both dense and sparse.")
    if entry.dtype not in _DTYPES:
        raise ValueError(f"{path}: {key!r} declares unsupported dtype {entry.dtype!r}.")
    if entry.encoding not in _ENCODING_IDS:
        raise ValueError(f"{path}: {key!r} declares unknown mask encoding {entry.encoding!r}.")
    if any(s < 0 for s in entry.shape) or not 0 <= entry.nnz <= entry.numel:
        raise ValueError(
            f"{path}: {key!r} declares {entry.nnz} kept values for shape {list(entry.shape)}."
        )
    values_dtype, values_shape = info[key + VALUES_SUFFIX]
    if values_dtype != _DTYPES[entry.dtype][1]:
        raise ValueError(
            f"{path}: values of {key!r} are stored as {values_dtype}, the metadata declares "
            f"{entry.dtype}."
        )
    if values_shape != (entry.nnz,):
        raise ValueError(
            f"{path}: {key!r} stores {list(values_shape)} values, the metadata declares "
            f"{entry.nnz} kept weights."
        )
    mask_dtype, mask_shape = info[key + MASK_SUFFIX]
    if mask_dtype != "U8" or len(mask_shape) != 1 or mask_shape[0] < 1:
        raise ValueError(f"{path}: the mask of {key!r} must be non-empty 1-D uint8 bytes.")
    stored_shape = shapes[key + SHAPE_SUFFIX]
    if stored_shape.dtype != torch.int64 or stored_shape.tolist() != list(entry.shape):
        raise ValueError(
            f"{path}: {key!r} stores shape {stored_shape.tolist()}, the metadata declares "
            f"{list(entry.shape)}."
        )


def load_compact_weights(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, CompactEntry]]:
    """Read and fully validate a compact weights file.

    Returns:
        `(state_dict, masks, entries)`: the dense tensors under their disk keys, the masks keyed by
        parameter name, and the metadata entries keyed by disk key.

    Raises:
        ValueError: for a truncated or inconsistent file (every mask is decoded and checked).
    """
    entries = read_compact_header(path)
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        names = f.keys()
        for key in names:
            if not key.endswith(SPARSE_SUFFIXES):
                state[key] = f.get_tensor(key)
        for key, entry in entries.items():
            dense, positions = _densify(
                f.get_tensor(key + VALUES_SUFFIX),
                f.get_tensor(key + MASK_SUFFIX),
                f.get_tensor(key + SHAPE_SUFFIX),
                entry.param,
            )
            mask = torch.zeros(entry.numel, dtype=torch.bool)
            mask[torch.from_numpy(positions)] = True
            state[key] = dense
            masks[entry.param] = mask.view(entry.shape)
    return state, masks, entries


def load_compact_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The masks (True = kept) of a compact weights file, keyed by parameter name."""
    entries = read_compact_header(path)
    masks = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        for key, entry in entries.items():
            data = f.get_tensor(key + MASK_SUFFIX).numpy().tobytes()
            bits = decode_mask(data, entry.numel, entry.nnz, entry.param)
            masks[entry.param] = torch.from_numpy(bits).view(entry.shape)
    return masks


def validate_compact_weights(path: str | os.PathLike) -> dict[str, CompactEntry]:
    """Fully validate a compact weights file (structure and every mask); returns its entries."""
    entries = read_compact_header(path)
    with safe_open(os.fspath(path), framework="pt") as f:
        for key, entry in entries.items():
            data = f.get_tensor(key + MASK_SUFFIX).numpy().tobytes()
            decode_positions(data, entry.numel, entry.nnz, entry.param)
    return entries


def information_bound(entries: Mapping[str, CompactEntry], dense_value_bytes: int = 0) -> float:
    """Bytes needed at least: every stored value plus `n * H(p) / 8` for the masks.

    `p` is the density over all pruned tensors together; `dense_value_bytes` counts the tensors
    stored dense (their values are all kept).
    """
    numel = sum(e.numel for e in entries.values())
    nnz = sum(e.nnz for e in entries.values())
    value_bytes = sum(e.nnz * _DTYPES[e.dtype][0].itemsize for e in entries.values())
    p = nnz / numel if numel else 0.0
    entropy = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return dense_value_bytes + value_bytes + numel * entropy / 8


# --------------------------------------------------------------------------- folders


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
    atomic_write_text(os.path.join(save_directory, "config.json"), text)
    return entries


@contextlib.contextmanager
def staged_directory(
    save_directory: str | os.PathLike, stale: tuple[str, ...] = ()
) -> Iterator[str]:
    """Yield an empty staging folder; on success move its files into `save_directory`.

    Files are moved one by one with `os.replace` (atomic), weights first and `config.json` after
    them, so the folder never holds a config pointing at weights that are not fully written. Then
    the names in `stale` (glob patterns, e.g. the other format's weights) are removed. If the block
    fails, `save_directory` is left as it was.
    """
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory` must be a folder, but {save_directory} is a file.")
    os.makedirs(save_directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".hf_afr-staging-", dir=save_directory)
    try:
        yield staging
        produced = sorted(os.listdir(staging), key=_commit_order)
        for name in produced:
            os.replace(os.path.join(staging, name), os.path.join(save_directory, name))
        for name in os.listdir(save_directory):
            if name not in produced and any(fnmatch.fnmatchcase(name, p) for p in stale):
                logger.info(
                    f"Removing {name} from {save_directory}: it belongs to the other format."
                )
                os.remove(os.path.join(save_directory, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit_order(name: str) -> tuple[int, str]:
    if name.endswith((".safetensors", ".bin")):
        return 0, name
    return (2, name) if name == "config.json" else (1, name)


def densify_checkpoint(
    source_directory: str | os.PathLike, save_directory: str | os.PathLike
) -> dict[str, CompactEntry]:
    """Convert a compact checkpoint folder into a dense one, file by file (no model is built).

    Writes `model.safetensors` (standard, loads without hf_afr), `pruning_masks.safetensors`,
    `config.json` without the compact loading guard, the other files of the source (pruning
    config, image processor, plot) and the README.md with its format section updated. Needs only
    the compact reader, not the transformers loader integration.
    """
    from .config import PRUNER_CONFIG_NAME, PrunerConfig
    from .mask_io import MASKS_NAME, save_masks

    source_directory = os.fspath(source_directory)
    config_path = os.path.join(source_directory, "config.json")
    weights_path = os.path.join(source_directory, COMPACT_WEIGHTS_NAME)
    if not os.path.isfile(weights_path) or not os.path.isfile(config_path):
        raise ValueError(
            f"{source_directory} is not a compact checkpoint: it needs config.json and "
            f"{COMPACT_WEIGHTS_NAME}."
        )
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    quantization = config.pop("quantization_config", None) or {}
    if quantization.get("quant_method") != COMPACT_QUANT_METHOD:
        raise ValueError(f"{config_path} does not declare an hf_afr compact checkpoint.")
    config.pop("transformers_weights", None)
    state, masks, entries = load_compact_weights(weights_path)
    skip = {"config.json", COMPACT_WEIGHTS_NAME, "README.md"}
    with staged_directory(save_directory, stale=(COMPACT_WEIGHTS_NAME,)) as staging:
        for name in os.listdir(source_directory):
            path = os.path.join(source_directory, name)
            if name not in skip and not name.startswith(".") and os.path.isfile(path):
                shutil.copyfile(path, os.path.join(staging, name))
        save_file(state, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        save_masks(masks, os.path.join(staging, MASKS_NAME))
        atomic_write_text(
            os.path.join(staging, "config.json"),
            json.dumps(config, indent=2, sort_keys=True) + "\n",
        )
        pruner_config = os.path.join(source_directory, PRUNER_CONFIG_NAME)
        readme = os.path.join(source_directory, "README.md")
        if os.path.isfile(pruner_config):
            from .model_card import create_model_card, save_model_card

            card = create_model_card(
                PrunerConfig.from_pretrained(pruner_config),
                masks,
                checkpoint_format="dense",
                model_name=os.path.basename(os.path.abspath(save_directory)),
                weights_size=os.path.getsize(os.path.join(staging, "model.safetensors")),
            )
            save_model_card(card, staging, masks, existing=readme)
        elif os.path.isfile(readme):
            shutil.copyfile(readme, os.path.join(staging, "README.md"))
    return entries
