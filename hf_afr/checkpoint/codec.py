"""Lossless coding of pruned tensors: a boolean mask (True = kept) as bytes, plus the kept values.

Mask codes

(the first byte of the output names the code):

- `bitmask`: the packed bitmask (8 weights per byte);
- `bitmask-zlib`: the packed bitmask, zlib-compressed;
- `gaps-zlib` / `pruned-gaps-zlib`: the gaps between kept (or pruned) positions, one byte per gap
  below 255 with 255 as a continuation byte, zlib-compressed.

On random masks at 90-98% sparsity the gap code is within about 1-2% of the mask entropy
`n * H(p)`, the zlib-packed bitmask 18-47% above it and the raw bitmask 2.1-7x. Every decoder
checks its input (a corrupt or hostile stream raises a `ValueError`, never blows up).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

MASK_ENCODINGS = {0: "bitmask", 1: "bitmask-zlib", 2: "gaps-zlib", 3: "pruned-gaps-zlib"}
ENCODING_IDS = {name: code for code, name in MASK_ENCODINGS.items()}
# Gap coding is tried only where it can win: few kept (or few pruned) weights.
_GAP_CODING_MAX_FRACTION = 0.25

STORED_DTYPES = {
    "float32": (torch.float32, "F32"),
    "float16": (torch.float16, "F16"),
    "bfloat16": (torch.bfloat16, "BF16"),
    "float64": (torch.float64, "F64"),
}

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}

# Files of one format that must not survive a save in the other format.
DENSE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
DENSE_WEIGHT_PATTERNS = (*DENSE_WEIGHT_FILES, "model-*-of-*.safetensors")


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
    return encode_bits(np.asarray(mask, dtype=bool).reshape(-1))


def encode_bits(bits: np.ndarray, positions: np.ndarray | None = None) -> tuple[bytes, str]:
    """`encode_mask` of a flat boolean array; `positions` (its nonzero entries) if known."""
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
    return bytes([ENCODING_IDS[encoding]]) + candidates[encoding], encoding


def mask_bytes_bound(encoding: str, numel: int, nnz: int) -> int:
    """The most bytes the decoded stream of a valid mask of `numel` weights, `nnz` kept, holds.

    zlib streams are decompressed with this bound, which follows from the checked shape and
    count, never from the stream: a packed bitmask has `ceil(numel / 8)` bytes; a gap code has
    one byte per coded position (kept ones, or pruned ones for `pruned-gaps-zlib`) plus one per
    255 weights skipped.
    """
    if encoding in ("bitmask", "bitmask-zlib"):
        return (numel + 7) // 8
    coded = nnz if encoding == "gaps-zlib" else numel - nnz
    return coded + numel // 255 + 1


def decode_positions(data: bytes, numel: int, nnz: int, name: str = "mask") -> np.ndarray:
    """Decode `encode_mask` bytes into the sorted flat positions of the kept entries (int64).

    Raises:
        ValueError: if the bytes are corrupt, truncated, or the number of kept entries is not `nnz`.
    """
    if not data or data[0] not in MASK_ENCODINGS:
        code = data[0] if data else None
        raise ValueError(f"Corrupt mask for {name!r}: unknown mask encoding {code!r}.")
    encoding, payload = MASK_ENCODINGS[data[0]], data[1:]
    if not 0 <= nnz <= numel:
        raise ValueError(f"Corrupt compact tensor {name!r}: {nnz} kept of {numel} weights.")
    n_bytes = (numel + 7) // 8
    if encoding in ("bitmask", "bitmask-zlib"):
        if encoding == "bitmask-zlib":
            payload = _inflate(payload, mask_bytes_bound(encoding, numel, nnz), name)
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
        payload = _inflate(payload, mask_bytes_bound(encoding, numel, nnz), name)
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


def compact_tensor(
    weight: torch.Tensor, mask: torch.Tensor, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a pruned weight into its kept values (1-D), encoded mask (uint8) and shape (int64).

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
    data, _ = encode_bits(bits, positions)
    mask_data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return values, mask_data, torch.tensor(list(weight.shape), dtype=torch.int64)


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
    return densify_with_positions(values, mask_data, shape, name, dtype)[0]


def densify_with_positions(
    values, mask_data, shape, name, dtype=None
) -> tuple[torch.Tensor, np.ndarray]:
    """`densify_tensor`, also returning the kept positions (flat, sorted)."""
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
