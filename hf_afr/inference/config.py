"""`SparseInferenceConfig`: the options of `to_sparse_inference`."""

from __future__ import annotations

from dataclasses import dataclass, field

KERNELS = ("dense", "csr", "bsr", "semi_structured")


@dataclass
class SparseInferenceConfig:
    """How `to_sparse_inference` converts a pruned model.

    Example:
        ```python
        >>> from hf_afr import SparseInferenceConfig, to_sparse_inference
        >>> config = SparseInferenceConfig(kernels=("dense", "csr"), shrink=True)
        >>> report = to_sparse_inference(model, config, example_inputs={"pixel_values": images})
        >>> print(report)  # per layer: kernel, density, bytes, measured speed-up
        ```
    """

    shrink: bool = field(
        default=True,
        metadata={
            "help": "First remove, exactly, the MLP hidden units, value dimensions, query/key "
            "dimensions and heads that pruning emptied (see `hf_afr.shrink`)."
        },
    )
    kernels: tuple[str, ...] = field(
        default=KERNELS,
        metadata={
            "help": "Kernels each Linear may run: 'dense', 'csr' (torch.sparse CSR), 'bsr' "
            "(block CSR, where whole blocks are empty) and 'semi_structured' (2:4 weights on "
            "CUDA via torch.sparse.to_sparse_semi_structured). 'dense' is always a candidate."
        },
    )
    min_speedup: float = field(
        default=1.0,
        metadata={
            "help": "A sparse kernel replaces dense only if its measured median speed-up on the "
            "layer is at least this. 1.0: ties go to the sparse kernel, which holds less memory; "
            "above 1: a margin against timing noise; below 1: accept a slower sparse kernel to "
            "save memory."
        },
    )
    min_sparsity: float = field(
        default=0.7,
        metadata={
            "help": "CSR and BSR are timed only for weights with at least this fraction of exact "
            "zeros (below it they do not beat dense on any hardware we know)."
        },
    )
    bsr_block_sizes: tuple[int, ...] = field(
        default=(32, 16),
        metadata={"help": "Square block sizes tried for BSR (where the shape is divisible)."},
    )
    bsr_max_block_density: float = field(
        default=0.5,
        metadata={
            "help": "BSR is a candidate only if at most this fraction of the blocks hold a "
            "nonzero (it stores every weight of a nonzero block)."
        },
    )
    timing_rounds: int = field(
        default=5,
        metadata={
            "help": "Interleaved timing rounds per layer (dense and each candidate once per "
            "round, order rotating); the choice compares the fastest call of each, since load "
            "from other processes only slows calls down."
        },
    )
    drop_slower_than: float = field(
        default=2.0,
        metadata={
            "help": "A kernel whose warm-up call on a layer is this many times slower than dense "
            "is dropped without further rounds (it could not win; saves conversion time)."
        },
    )
    min_time_per_call: float = field(
        default=0.002,
        metadata={"help": "Seconds each timed measurement lasts at least (calls are repeated)."},
    )
    verify: bool = field(
        default=True,
        metadata={
            "help": "Compare the converted model's outputs with the original's on the example "
            "inputs and raise if they differ beyond `atol` (relative to the output scale)."
        },
    )
    atol: float | None = field(
        default=None,
        metadata={
            "help": "Tolerance of `verify` and of the per-layer and per-block checks, times "
            "max(1, largest absolute output). Default: 1e-4 (float32), 2e-2 (float16/bfloat16)."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.kernels, str):
            self.kernels = (self.kernels,)
        self.kernels = tuple(self.kernels)
        unknown = [k for k in self.kernels if k not in KERNELS]
        if unknown:
            raise ValueError(
                f"Unknown kernels {unknown}; choose among {', '.join(map(repr, KERNELS))}."
            )
        if "dense" not in self.kernels:
            self.kernels = ("dense", *self.kernels)
        if not self.min_speedup > 0.0:
            raise ValueError(f"`min_speedup` must be positive, got {self.min_speedup}.")
        if not 0.0 <= self.min_sparsity < 1.0:
            raise ValueError(f"`min_sparsity` must be in [0, 1), got {self.min_sparsity}.")
        if not 0.0 < self.bsr_max_block_density <= 1.0:
            raise ValueError(
                f"`bsr_max_block_density` must be in (0, 1], got {self.bsr_max_block_density}."
            )
        self.bsr_block_sizes = tuple(int(b) for b in self.bsr_block_sizes)
        if any(b < 1 for b in self.bsr_block_sizes):
            raise ValueError(f"`bsr_block_sizes` must be positive, got {self.bsr_block_sizes}.")
        if self.drop_slower_than <= 1.0:
            raise ValueError(f"`drop_slower_than` must be > 1, got {self.drop_slower_than}.")
        if self.timing_rounds < 1:
            raise ValueError(f"`timing_rounds` must be at least 1, got {self.timing_rounds}.")
        if self.min_time_per_call < 0 or (self.atol is not None and self.atol <= 0):
            raise ValueError("`min_time_per_call` must be >= 0 and `atol` > 0 (or None).")
