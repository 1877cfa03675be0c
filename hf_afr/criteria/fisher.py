"""Empirical Fisher / OBD saliency: `0.5 * sum_n (dL_n/dw)^2 * w^2`, exact per-sample gradients.

`L_n` is the cross-entropy of sample n; the sum runs over every sample of the scoring batches.
This is Optimal Brain Damage's saliency `0.5 * H_ww * w^2` with the Hessian's diagonal
replaced by the empirical Fisher's (LeCun et al., 1990; Theis et al., 2018).

Per-sample gradients are computed exactly without materialising them for all weights at
once: for a `Linear` layer with input `x_n` (tokens x in) and output gradient `d_n`
(tokens x out) of sample n, `dL_n/dW = d_n^T x_n`; for a `Conv2d` the same holds with `x_n`
the unfolded input patches. A forward hook keeps each scored layer's input, a hook on its
output receives `d` during one backward pass of `sum_n L_n` (samples do not interact in
evaluation mode, so `d_n` is sample n's own gradient), and the squares are summed in chunks of
samples. That backward pass asks for the gradient of the input images only, so autograd
computes no weight gradient; the per-sample products cost what a weight gradient costs.

Requirements: every scored weight is the `weight` of an `nn.Linear` or `nn.Conv2d` (groups
1) called once per forward pass, whose input and output tensors hold the samples along their
first dimension (possibly times windows, as in Swin, sample-major).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_gradient_sums
from .gradients import _micro_batches, prepare_batch, scoring_mode
from .registry import register_criterion

# Per-sample gradient elements materialised at once per layer (a chunk of samples).
_CHUNK_ELEMENTS = 2**24


def _scored_modules(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, nn.Module]:
    modules = {}
    for name in params:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        ok = attr == "weight" and (
            isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
        )
        if not ok:
            raise ValueError(
                f"The 'fisher' criterion computes per-sample gradients of nn.Linear and nn.Conv2d "
                f"weights only, but {name!r} belongs to a {type(module).__name__}; exclude it "
                "with `exclude_modules` or use another method."
            )
        modules[name] = module
    return modules


def per_sample_operands(
    module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, x) as (samples, rows, out) and (samples, rows, in): `dL_n/dW = d[n]^T x[n]`."""
    if isinstance(module, nn.Conv2d):
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        x = x.transpose(1, 2)  # (batch, positions, in * kh * kw)
        grad_out = grad_out.flatten(2).transpose(1, 2)  # (batch, positions, out)
    if x.shape[0] % num_samples or grad_out.shape[0] % num_samples:
        raise ValueError(
            f"Cannot split the input of {type(module).__name__} (shape {tuple(x.shape)}) into "
            f"{num_samples} samples: 'fisher' needs layers whose first dimension holds the samples."
        )
    x = x.reshape(num_samples, -1, x.shape[-1])
    grad_out = grad_out.reshape(num_samples, -1, grad_out.shape[-1])
    return grad_out, x


def add_squared_per_sample_grads(
    total: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor
) -> None:
    """`total += sum_n (grad_out[n]^T x[n])^2`, in float32, a chunk of samples at a time."""
    n, _, out = grad_out.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(1, out * x.shape[-1]))
    flat = total.view(out, -1)
    for i in range(0, n, chunk):
        d, a = grad_out[i : i + chunk].float(), x[i : i + chunk].float()
        flat.add_(torch.bmm(d.transpose(1, 2), a).square_().sum(0))


class _PerSampleSquares:
    """Hooks on the scored layers that add up the squared per-sample weight gradients."""

    def __init__(self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]):
        self.sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
        self.num_samples = 0
        self.calls: set[str] = set()
        self.handles = [
            module.register_forward_hook(self._forward_hook(name, module))
            for name, module in modules.items()
        ]

    def _forward_hook(self, name: str, module: nn.Module):
        def hook(_module, inputs, output):
            if not torch.is_grad_enabled():
                return
            if name in self.calls:
                raise ValueError(
                    f"{name!r} is used more than once per forward pass; 'fisher' needs every "
                    "scored layer to run once per sample (exclude it with `exclude_modules`)."
                )
            self.calls.add(name)
            x, n = inputs[0].detach(), self.num_samples

            def on_grad(grad_out: torch.Tensor) -> None:
                d, a = per_sample_operands(module, x, grad_out.detach(), n)
                add_squared_per_sample_grads(self.sums[name], d, a)

            output.register_hook(on_grad)

        return hook

    def backward(self, batch: dict[str, torch.Tensor], model: nn.Module) -> None:
        """One forward and one backward pass of `sum_n L_n` over the samples of `batch`."""
        self.calls.clear()
        self.num_samples = batch["pixel_values"].shape[0]
        pixels = batch["pixel_values"].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(pixel_values=pixels).logits.float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
            torch.autograd.grad(loss, pixels)

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()


@register_criterion("fisher", needs_labels=True)
def fisher_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    params: dict[str, nn.Parameter],
    config,
) -> dict[str, torch.Tensor]:
    """`0.5 * sum_n (dL_n/dw)^2 * w^2` over all samples of the scoring batches."""
    if getattr(config, "gradient_checkpointing", False):
        raise ValueError(
            "'fisher' reads each layer's input once per forward pass, which activation "
            "checkpointing repeats: set `gradient_checkpointing=False` and bound memory with "
            "`micro_batch_size` instead."
        )
    modules = _scored_modules(model, params)
    num_batches = 0
    with scoring_mode(model, {}):
        squares = _PerSampleSquares(modules, params)
        try:
            for raw_batch in batches:
                batch = prepare_batch(raw_batch, model, needs_labels=True)
                for mb in _micro_batches(batch, config.micro_batch_size):
                    squares.backward(mb, model)
                num_batches += 1
        finally:
            squares.remove_hooks()
    sums = squares.sums
    num_batches = all_reduce_gradient_sums([sums], num_batches)
    if num_batches == 0:
        raise ValueError(
            "No scoring batches were given: pass an iterable (e.g. a DataLoader) that yields at "
            "least one dict with 'pixel_values' and 'labels'."
        )
    with torch.no_grad():
        return {
            name: sums[name].mul_(p.detach().float().square()).mul_(0.5)
            for name, p in params.items()
        }
