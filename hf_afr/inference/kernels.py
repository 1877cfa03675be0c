"""Sparse kernels for `nn.Linear` weights: CSR, BSR and 2:4 semi-structured, inference only.

`SparseLinear` holds its weight in exactly one format (the dense weight is dropped), so its
resident memory is that of the format: values plus int32 indices for CSR/BSR, the packed
values plus metadata for semi-structured. `kernel_candidates` lists the formats a weight
qualifies for, and why the others do not apply.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import SparseInferenceConfig

TRAINING_ERROR = (
    "This model was converted for inference by hf_afr (to_sparse_inference / shrink) and cannot "
    "be trained: its layers no longer match the pruning masks. Reload the pruned checkpoint "
    "with from_pretrained to fine-tune it."
)

# The pattern the semi-structured kernels need, per dtype (torch.sparse docs: "n in every 2n").
SEMI_STRUCTURED_PATTERNS = {
    torch.float16: (2, 4),
    torch.bfloat16: (2, 4),
    torch.int8: (2, 4),
    torch.float32: (1, 2),
}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes held by a dense, CSR/BSR or tensor-subclass (e.g. semi-structured) tensor."""
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = (tensor.crow_indices(), tensor.col_indices(), tensor.values())
        return sum(tensor_bytes(p) for p in parts)
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        return sum(
            tensor_bytes(getattr(tensor, n)) for n in names if getattr(tensor, n) is not None
        )
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each tensor counted once)."""
    tensors = [p for _, p in module.named_parameters()] + [b for _, b in module.named_buffers()]
    return sum(tensor_bytes(t) for t in tensors)


def has_nm_pattern(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every run of `m` consecutive weights along the last dimension has <= `n` nonzeros."""
    if weight.shape[-1] % m:
        return False
    nonzeros = (weight.detach().reshape(-1, m) != 0).sum(dim=1)
    return bool((nonzeros <= n).all())


def _with_int32_indices(sparse: torch.Tensor) -> torch.Tensor:
    """The same CSR/BSR tensor with int32 indices (half the index memory of int64)."""
    if sparse.values().numel() >= 2**31 - 1:
        return sparse
    build = (
        torch.sparse_csr_tensor if sparse.layout == torch.sparse_csr else torch.sparse_bsr_tensor
    )
    return build(
        sparse.crow_indices().to(torch.int32),
        sparse.col_indices().to(torch.int32),
        sparse.values(),
        sparse.shape,
    )


def to_semi_structured(weight: torch.Tensor) -> torch.Tensor:
    """`torch.sparse.to_sparse_semi_structured(weight)`; callers check the pattern first."""
    return torch.sparse.to_sparse_semi_structured(weight)


class SparseLinear(nn.Module):
    """Inference-only replacement of an `nn.Linear` whose weight is stored in a sparse format.

    The output equals `F.linear(x, weight, bias)` to float tolerance. The module keeps no dense
    copy of the weight and refuses to run in training mode.

    Args:
        sparse_weight (`torch.Tensor`): the `[out, in]` weight as CSR, BSR or semi-structured.
        bias (`torch.Tensor`, *optional*): the bias, kept dense.
        kernel (`str`): `"csr"`, `"bsr"` or `"semi_structured"`.
        density (`float`): fraction of nonzero weights (reported in `extra_repr`).
        speedup (`float`, *optional*): the measured median speed-up over dense on this layer.
    """

    def __init__(
        self,
        sparse_weight: torch.Tensor,
        bias: torch.Tensor | None,
        kernel: str,
        density: float,
        speedup: float | None = None,
    ):
        super().__init__()
        self.training = False
        self.out_features, self.in_features = sparse_weight.shape
        self.kernel = kernel
        self.density = density
        self.speedup = speedup
        self.register_buffer("sparse_weight", sparse_weight)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(TRAINING_ERROR)
        x2 = x.reshape(-1, self.in_features)
        if self.kernel == "semi_structured":
            out = F.linear(x2, self.sparse_weight, self.bias)
        elif self.bias is None:
            out = torch.sparse.mm(self.sparse_weight, x2.t()).t().contiguous()
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.sparse_weight, x2.t()).t().contiguous()
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        fmt = self.kernel
        if self.kernel in ("csr", "bsr"):
            index = str(self.sparse_weight.col_indices().dtype).replace("torch.", "")
            fmt = f"{self.kernel} ({index} indices"
            if self.kernel == "bsr":
                fmt += ", blocks {}x{}".format(*self.sparse_weight.values().shape[1:])
            fmt += ")"
        speed = "" if self.speedup is None else f", measured {self.speedup:.2f}x dense"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, kernel={fmt}, density={self.density:.1%}, "
            f"bytes={module_bytes(self)}{speed}"
        )


def build_sparse_linear(
    linear: nn.Linear, kernel: str, block_size: int | None = None, speedup: float | None = None
) -> SparseLinear:
    """A `SparseLinear` computing what `linear` computes, with its weight in `kernel`'s format."""
    weight = linear.weight.detach()
    density = float((weight != 0).sum()) / max(weight.numel(), 1)
    with warnings.catch_warnings():
        # torch's notes that sparse CSR/BSR is "beta" and that invariant checks are off.
        warnings.filterwarnings("ignore", message=".*[Ss]parse (CSR|BSR|invariant).*")
        sparse = _to_format(weight, kernel, block_size)
    return SparseLinear(sparse, linear.bias, kernel, density, speedup)


def _to_format(weight: torch.Tensor, kernel: str, block_size: int | None) -> torch.Tensor:
    if kernel == "csr":
        return _with_int32_indices(weight.to_sparse_csr())
    if kernel == "bsr":
        return _with_int32_indices(weight.to_sparse_bsr((block_size, block_size)))
    if kernel == "semi_structured":
        problem = semi_structured_pattern_problem(weight)
        if problem:
            raise ValueError(f"Cannot use the semi-structured kernel: {problem}.")
        return to_semi_structured(weight)
    raise ValueError(f"Unknown sparse kernel {kernel!r}; use 'csr', 'bsr' or 'semi_structured'.")


def _bsr_block_density(weight: torch.Tensor, block: int) -> float:
    rows, cols = weight.shape
    blocks = (weight != 0).reshape(rows // block, block, cols // block, block).any(dim=(1, 3))
    return float(blocks.float().mean())


def semi_structured_device_problem(weight: torch.Tensor) -> str | None:
    """Why this torch / device cannot run semi-structured kernels for `weight`, or None."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if weight.device.type != "cuda":
        return f"needs a CUDA device (the weight is on {weight.device.type})"
    return None


def semi_structured_pattern_problem(weight: torch.Tensor) -> str | None:
    """Why `weight` does not fit the semi-structured format of its dtype, or None.

    `to_sparse_semi_structured` keeps 2 of every 4 values (1 of 2 for float32) whatever they
    are, so a weight with more nonzeros per group would be silently changed: we check first.
    """
    pattern = SEMI_STRUCTURED_PATTERNS.get(weight.dtype)
    if pattern is None:
        return f"dtype {weight.dtype} is not supported (float16, bfloat16, int8, float32)"
    if not has_nm_pattern(weight, *pattern):
        return (
            f"the weight does not have the {pattern[0]}:{pattern[1]} pattern {weight.dtype} needs"
        )
    return None


def semi_structured_unavailable(weight: torch.Tensor) -> str | None:
    """Why the semi-structured kernel cannot run this weight, or None if it can be tried."""
    return semi_structured_device_problem(weight) or semi_structured_pattern_problem(weight)


def kernel_candidates(
    linear: nn.Linear, config: SparseInferenceConfig
) -> tuple[dict[str, Callable[[], SparseLinear]], dict[str, str]]:
    """Builders of the sparse modules worth timing for `linear`, and why other kernels are out.

    Returns:
        `(candidates, skipped)`: `{label: builder}` (labels such as `"csr"`, `"bsr32"`) and
        `{kernel: reason}` for the requested kernels that do not apply.
    """
    weight = linear.weight.detach()
    sparsity = 1.0 - float((weight != 0).sum()) / max(weight.numel(), 1)
    candidates: dict[str, Callable[[], SparseLinear]] = {}
    skipped: dict[str, str] = {}
    too_dense = f"sparsity {sparsity:.1%} < min_sparsity {config.min_sparsity:.0%}"
    if "csr" in config.kernels:
        if sparsity >= config.min_sparsity:
            candidates["csr"] = lambda: build_sparse_linear(linear, "csr")
        else:
            skipped["csr"] = too_dense
    if "bsr" in config.kernels:
        reasons = []
        for block in config.bsr_block_sizes:
            if weight.shape[0] % block or weight.shape[1] % block:
                reasons.append(f"{block}x{block}: shape not divisible")
                continue
            block_density = _bsr_block_density(weight, block)
            if sparsity < config.min_sparsity or block_density > config.bsr_max_block_density:
                reasons.append(f"{block}x{block}: {block_density:.0%} of blocks nonzero")
                continue
            candidates[f"bsr{block}"] = lambda b=block: build_sparse_linear(linear, "bsr", b)
        if reasons and not any(k.startswith("bsr") for k in candidates):
            skipped["bsr"] = "; ".join(reasons)
    if "semi_structured" in config.kernels:
        reason = semi_structured_unavailable(weight)
        if reason is None:
            candidates["semi_structured"] = lambda: build_sparse_linear(linear, "semi_structured")
        else:
            skipped["semi_structured"] = reason
    return candidates, skipped
