"""`to_sparse_inference`: shrink a pruned model, then give each Linear its fastest kernel."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .checks import close, default_atol
from .config import SparseInferenceConfig
from .guard import check_masks, mark_inference_only
from .kernels import (
    kernel_candidates,
    module_bytes,
    semi_structured_device_problem,
    semi_structured_pattern_problem,
)
from .report import InferenceReport, LayerChoice
from .shrink import shrink
from .timing import time_side_by_side

logger = logging.get_logger(__name__)

FilterFn = Callable[[nn.Module, str], bool]


def default_example_inputs(model: nn.Module, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Random `pixel_values` of the model's image size, or a `ValueError` asking for inputs."""
    config = getattr(model, "config", None)
    size = getattr(config, "image_size", None)
    if config is None or size is None:
        raise ValueError(
            "Cannot build example inputs for this model; pass `example_inputs` (a dict of model "
            "inputs, a tensor or a tuple of tensors) with the shapes you will run."
        )
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, getattr(config, "num_channels", 3), height, width)
    return {"pixel_values": torch.randn(*shape, generator=generator)}


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def run_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call `model` on a dict / tuple / tensor of inputs; return its logits (or first output)."""
    with torch.inference_mode():
        if isinstance(inputs, dict):
            output = model(**inputs)
        elif isinstance(inputs, (tuple, list)):
            output = model(*inputs)
        else:
            output = model(inputs)
    if hasattr(output, "logits") and output.logits is not None:
        return output.logits
    return output if torch.is_tensor(output) else output[0]


def _to_device(inputs: Any, device: torch.device, dtype: torch.dtype) -> Any:
    def move(t):
        if not torch.is_tensor(t):
            return t
        return t.to(device, dtype) if t.is_floating_point() else t.to(device)

    if isinstance(inputs, dict):
        return {k: move(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move(v) for v in inputs)
    return move(inputs)


def _linear_input_shapes(model: nn.Module, inputs: Any, names: list[str]) -> dict[str, torch.Size]:
    """The input shape each named Linear sees when the model runs on `inputs`."""
    shapes, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:

        def hook(module, args, name=name):
            shapes.setdefault(name, args[0].shape)

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def _time_layer(
    name: str, linear: nn.Linear, input_shape: torch.Size, config: SparseInferenceConfig
) -> tuple[LayerChoice, dict[str, nn.Module]]:
    """Time dense against every candidate kernel on this layer (best-of speed-ups).

    Returns the layer's `LayerChoice` (still "dense") and the candidate modules that reproduce
    the dense layer's output, keyed by label.
    """
    weight = linear.weight
    sparsity = 1.0 - float(weight.ne(0).sum()) / max(weight.numel(), 1)
    rows = int(torch.Size(input_shape[:-1]).numel())
    choice = LayerChoice(name, tuple(weight.shape), rows, sparsity, "dense", None)
    choice.bytes_dense = choice.bytes_now = module_bytes(linear)
    builders, choice.skipped = kernel_candidates(linear, config)
    if not builders:
        return choice, {}
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(weight.device, weight.dtype)
    expected = linear(x)
    modules: dict[str, nn.Module] = {}
    for label, build in builders.items():
        try:
            module = build().eval()
            if not close(module(x), expected, config.atol):
                raise RuntimeError("its output differs from the dense layer")
            modules[label] = module
        except (RuntimeError, ValueError, NotImplementedError) as err:
            choice.skipped[label] = f"failed: {str(err).splitlines()[0][:120]}"
    if not modules:
        return choice, {}
    variants = {label: (lambda m=m: m(x)) for label, m in {"dense": linear, **modules}.items()}
    timings = time_side_by_side(
        variants,
        "dense",
        config.timing_rounds,
        config.min_time_per_call,
        weight.device,
        drop_slower_than=config.drop_slower_than,
        warmup=False,  # every variant just ran on x (the output check above)
    )
    # Best-of estimates: load from other processes only slows calls down, never speeds them up.
    choice.candidates = {label: timings[label].best_speedup for label in modules}
    return choice, modules


def _decide(choices: list[LayerChoice], config: SparseInferenceConfig) -> None:
    """Choose each layer's kernel from the speed-ups pooled over layers of the same kind.

    Layers with the same weight shape, input rows and sparsity (to 2%) run the same kernel at
    the same speed, so the median of their measured speed-ups is a steadier estimate than any
    one of them (12 layers per kind in a ViT-B/16 with uniform sparsity; one after shrinking).
    """
    groups: dict[tuple, list[LayerChoice]] = {}
    for c in choices:
        groups.setdefault((c.shape, c.input_rows, round(c.sparsity * 50)), []).append(c)
    for group in groups.values():
        labels = dict.fromkeys(label for c in group for label in c.candidates)
        pooled = {
            label: statistics.median(c.candidates[label] for c in group if label in c.candidates)
            for label in labels
        }
        for c in group:
            options = {label: pooled[label] for label in c.candidates}
            best = max(options, key=options.get, default=None)
            c.pooled_over = len(group)
            if best is not None and options[best] >= config.min_speedup:
                c.kernel, c.speedup = best, options[best]


def to_sparse_inference(
    model: nn.Module,
    config: SparseInferenceConfig | None = None,
    example_inputs: Any = None,
    filter_fn: FilterFn | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> InferenceReport:
    """Convert a pruned model for inference, in place: exact shrinking, then per-layer kernels.

    1. `config.shrink`: remove what pruning emptied (`hf_afr.shrink`), exactly.
    2. Each remaining `nn.Linear` (that `filter_fn` accepts) is timed on the input shape it sees
       when the model runs on `example_inputs`, dense against every kernel its weight qualifies
       for (CSR, BSR where blocks are empty, 2:4 semi-structured on CUDA), interleaved, fastest
       calls compared; the speed-ups of layers of the same shape and sparsity are pooled
       (median). A sparse kernel replaces the layer (as a `SparseLinear` that keeps no dense
       weight) only if it is at least `config.min_speedup` times faster, so dense stays where
       dense wins.
    3. `config.verify`: the outputs on `example_inputs` must equal the original ones to
       `config.atol`, else a `RuntimeError`.

    The kernel choice is made for the shapes of `example_inputs` (e.g. batch 1 vs 8 choose
    differently); other shapes still give correct outputs. Sparsity is read from the weights
    (exact zeros); `masks`, if given, are checked against them. The converted model is the same
    class, is in eval mode, works in `pipeline(...)` and under `torch.inference_mode()`, and
    refuses training and `state_dict()` with a clear error.

    Args:
        model (`nn.Module`): a pruned model, e.g. from `AutoModelForImageClassification.from_pretrained`.
        config (`SparseInferenceConfig`, *optional*): kernels, margins, timing and shrinking.
        example_inputs (*optional*): what the model will be called with: a dict of inputs, a
            tensor or a tuple; defaults to one random image of the model's `image_size`.
        filter_fn (`Callable[[nn.Module, str], bool]`, *optional*): called with each Linear (and,
            when shrinking, each attention/MLP block) and its name; False leaves it alone.
        masks (`dict[str, Tensor]`, *optional*): pruning masks (True = kept) to check.

    Returns:
        `InferenceReport`: per layer the kernel, its measured speed-up and bytes; the shrink table.

    Example:
        ```python
        >>> import hf_afr
        >>> from transformers import AutoModelForImageClassification
        >>> model = AutoModelForImageClassification.from_pretrained("vit-b16-afr95")
        >>> report = hf_afr.to_sparse_inference(model, example_inputs={"pixel_values": images})
        >>> print(report)
        ```
    """
    config = config if config is not None else SparseInferenceConfig()
    if not isinstance(config, SparseInferenceConfig):
        raise ValueError(f"`config` must be a SparseInferenceConfig, got {type(config).__name__}.")
    if masks is not None:
        check_masks(model, masks)
    model.eval()
    device, dtype = _device_and_dtype(model)
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    inputs = _to_device(example_inputs, device, dtype)
    report = InferenceReport(bytes_before=module_bytes(model))
    expected = run_model(model, inputs) if config.verify else None
    if config.shrink:
        report.shrink = shrink(model, filter_fn=filter_fn, atol=config.atol)
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and (filter_fn is None or filter_fn(module, name))
    ]
    _warn_if_semi_structured_unavailable(model, names, config)
    report.layers = _convert_linears(
        model, names, _linear_input_shapes(model, inputs, names), config
    )
    mark_inference_only(model)
    report.bytes_after = module_bytes(model)
    if expected is not None:
        _verify(model, inputs, expected, config, report)
    sparse = sum(layer.kernel != "dense" for layer in report.layers)
    logger.info(f"to_sparse_inference: {sparse} of {len(report.layers)} Linear layers run sparse.")
    return report


def _convert_linears(
    model: nn.Module, names: list[str], shapes: dict[str, torch.Size], config: SparseInferenceConfig
) -> list[LayerChoice]:
    """Give each named Linear its fastest kernel, in place; one `LayerChoice` per layer."""
    choices, modules = [], {}
    for name in names:
        linear = model.get_submodule(name)
        if name not in shapes:
            choice = LayerChoice(name, tuple(linear.weight.shape), 0, 0.0, "dense", None)
            choice.skipped["all"] = "not run by the example inputs"
        else:
            choice, modules[name] = _time_layer(name, linear, shapes[name], config)
        choices.append(choice)
    _decide([c for c in choices if c.candidates], config)
    for c in choices:
        if c.kernel != "dense":
            module = modules[c.name][c.kernel]
            module.speedup = c.speedup
            c.bytes_now = module_bytes(module)
            _set_submodule(model, c.name, module)
    return choices


def _warn_if_semi_structured_unavailable(model, names, config: SparseInferenceConfig) -> None:
    """Say plainly when weights have the 2:4 pattern but this machine cannot run the kernel."""
    if "semi_structured" not in config.kernels:
        return
    weights = [model.get_submodule(n).weight for n in names]
    fitting = [w for w in weights if w.any() and semi_structured_pattern_problem(w) is None]
    reason = semi_structured_device_problem(fitting[0]) if fitting else None
    if reason:
        logger.warning(
            f"{len(fitting)} Linear layers have the pattern of the semi-structured (2:4) sparse "
            f"kernels, but they are unavailable here: {reason}. Those layers use the other kernels."
        )


def _verify(
    model, inputs, expected, config: SparseInferenceConfig, report: InferenceReport
) -> None:
    actual = run_model(model, inputs)
    report.max_abs_diff = float((actual.double() - expected.double()).abs().max())
    if actual.shape != expected.shape or not close(actual, expected, config.atol):
        atol = config.atol or default_atol(actual.dtype)
        raise RuntimeError(
            f"The converted model's outputs differ from the original's by "
            f"{report.max_abs_diff:.3g} (tolerance {atol} x output scale). This is a bug in "
            "hf_afr; please report it with the model's config."
        )
