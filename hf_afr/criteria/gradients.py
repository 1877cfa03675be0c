"""Gradient accumulation shared by the data-driven criteria (SNIP, ReFer, AFR).

Two objectives are available:

- `"loss"`: the mean cross-entropy of a batch (SNIP).
- `"refer"`: `sum_l F_svd(F^l)` with `F_svd(F) = (1/N) * sum_i sigma_i(F)`, F^l the N x D
  matrix of per-sample features of layer l (ReFer).

Gradients of each objective are summed over the scoring batches. For ReFer that means the
objective is the *sum of per-batch objectives*: `F_svd` is computed on each batch's own
N x D matrix (it is not additive over samples), so the scores depend on the batch size.
Micro-batching (`config.micro_batch_size`) splits a batch without changing that objective:
the features of the whole batch are computed first, `dR/dF` is taken on the full matrix,
and each micro-batch is then back-propagated with its rows of `dR/dF` (exact).

How the computation is organised (it changes no definition above):

1. One forward pass per (micro-)batch serves every objective; each objective then gets its
   own backward pass (`retain_graph` for all but the last). AFR thus costs one forward and
   two backward passes, against one and one for SNIP.
2. Gradients never come back as a tuple: a post-accumulate-grad hook on every scored
   parameter moves each gradient into its objective's float32 sum as soon as autograd has
   computed it (the first gradient of a float32 model is taken over without a copy, later
   ones are added in place), so at most one extra gradient tensor is alive at a time and no
   zero-filled buffers are allocated. Any `.grad` the parameters had is restored afterwards.
3. With `config.gradient_checkpointing`, every encoder layer runs under non-reentrant
   activation checkpointing (see `checkpointed_layers`), without switching the model to
   training mode, so dropout stays off and the scores are unchanged.

The stages are labelled for `torch.profiler` (`hf_afr::forward`, `hf_afr::objectives`,
`hf_afr::backward[loss]`, `hf_afr::backward[refer]`, `hf_afr::accumulate`,
`hf_afr::feature_grads`), so that a profile of a scoring call shows where its time goes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from ..architectures import encoder_blocks, feature_reader
from ..distributed import all_reduce_gradient_sums
from ..sharding import is_dtensor, summed_gradients

OBJECTIVES = ("loss", "refer")


@contextlib.contextmanager
def scoring_mode(
    model: nn.Module, params: dict[str, nn.Parameter], gradient_checkpointing: bool = False
) -> Iterator[None]:
    """Eval mode, gradients only for `params`; restores modes, `requires_grad` and `.grad`.

    Args:
        model (`nn.Module`): the model to score.
        params (`dict[str, nn.Parameter]`): the parameters that get gradients.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): run the encoder
            layers under activation checkpointing (see `checkpointed_layers`).
    """
    modes = {module: module.training for module in model.modules()}
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    stashed_grads = {p: p.grad for p in params.values()}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with checkpointed_layers(model) if gradient_checkpointing else contextlib.nullcontext():
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        for p, grad in stashed_grads.items():
            p.grad = grad


@contextlib.contextmanager
def checkpointed_layers(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Activation checkpointing of the encoder blocks (the outermost transformers
    `GradientCheckpointingLayer`s, so Swin's blocks are not checkpointed twice), in eval mode.

    transformers only checkpoints a layer whose `.training` is True, which would also turn on
    dropout. Here each layer's `forward` is wrapped (on the instance) in non-reentrant
    `torch.utils.checkpoint.checkpoint` instead; modes and the model's own checkpointing
    settings are not touched, and the original `forward` is restored on exit.
    """
    try:
        layers = list(encoder_blocks(model).values())
    except ValueError:
        raise ValueError(
            f"`gradient_checkpointing=True` but {type(model).__name__} has no transformers "
            "GradientCheckpointingLayer to checkpoint; set `gradient_checkpointing=False`."
        ) from None
    previous = {layer: layer.__dict__.get("forward") for layer in layers}
    try:
        for layer in layers:
            layer.forward = _checkpointed(layer.forward)
        yield layers
    finally:
        for layer, forward in previous.items():
            if forward is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = forward


def _checkpointed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # nothing to save: a plain forward
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def prepare_batch(batch: Any, model: nn.Module, needs_labels: bool) -> dict[str, torch.Tensor]:
    """Validate a scoring batch and move it to the model's device and dtype."""
    if not isinstance(batch, Mapping) or "pixel_values" not in batch:
        keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(
            "Each scoring batch must be a dict with 'pixel_values' (and 'labels' for SNIP, AFR, "
            f"GraSP and Fisher), as produced by an image-classification collator; got {keys}."
        )
    pixel_values = torch.as_tensor(batch["pixel_values"])
    if pixel_values.ndim != 4:
        raise ValueError(
            f"'pixel_values' must have shape (batch, channels, height, width), "
            f"got {tuple(pixel_values.shape)}."
        )
    prepared = {"pixel_values": pixel_values.to(device=model.device, dtype=model.dtype)}
    if needs_labels:
        if batch.get("labels") is None:
            raise ValueError(
                "This criterion needs the downstream labels: each scoring batch must have a "
                "'labels' entry (for unlabeled data use method='refer', or a data-free method: "
                "'synflow', 'magnitude' or 'random')."
            )
        labels = torch.as_tensor(batch["labels"]).to(device=model.device, dtype=torch.long)
        num_labels = model.config.num_labels
        if labels.shape != pixel_values.shape[:1] or labels.min() < 0 or labels.max() >= num_labels:
            raise ValueError(
                f"'labels' must hold one class index in [0, {num_labels}) per image; got shape "
                f"{tuple(labels.shape)} with values in [{labels.min().item()}, {labels.max().item()}]. "
                "Pass num_labels/id2label to AFRPruner.from_pretrained to size the head."
            )
        prepared["labels"] = labels
    return prepared


def layer_features(
    hidden_states: Sequence[torch.Tensor], config, model_config
) -> list[torch.Tensor]:
    """One N x D float32 feature matrix per selected hidden state.

    Args:
        hidden_states: the model's `hidden_states` (embedding output first, then one per
            encoder block; per stage for Swin).
        config (`PrunerConfig`): `feature_layers` and `feature_token`.
        model_config: the model's config; its family (`hf_afr.architectures`) says which
            tokens are patches and what `feature_token="auto"` reads.
    """
    read = feature_reader(model_config, config.feature_token)
    states = hidden_states[1:] if config.feature_layers == "encoder" else hidden_states
    return [read(h) for h in states]


def refer_objective(features: Sequence[torch.Tensor], center: bool = False) -> torch.Tensor:
    """sum_l (1/N) sum_i sigma_i(F^l), each N x D matrix F^l first centred over its N rows
    (samples) if `center`. `svdvals` has finite gradients for rank-deficient F."""
    if center:
        features = [f - f.mean(dim=0, keepdim=True) for f in features]
    return sum(torch.linalg.svdvals(f).sum() / f.shape[0] for f in features)


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], objectives: Sequence[str]):
    outputs = model(pixel_values=batch["pixel_values"], output_hidden_states="refer" in objectives)
    values = {}
    if "loss" in objectives:
        values["loss"] = F.cross_entropy(outputs.logits.float(), batch["labels"])
    return outputs, values


def _micro_batches(
    batch: dict[str, torch.Tensor], size: int | None
) -> list[dict[str, torch.Tensor]]:
    n = batch["pixel_values"].shape[0]
    if size is None or size >= n:
        return [batch]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _refer_feature_grads(model, micro_batches, config) -> list[torch.Tensor]:
    """dR/dF^l for the whole batch, from a gradient-free forward over its micro-batches."""
    with torch.no_grad():
        chunks = [
            layer_features(
                model(pixel_values=mb["pixel_values"], output_hidden_states=True).hidden_states,
                config,
                model.config,
            )
            for mb in micro_batches
        ]
    features = [torch.cat(per_layer).requires_grad_(True) for per_layer in zip(*chunks)]
    with torch.enable_grad():
        objective = refer_objective(features, config.centers_features)
        return list(torch.autograd.grad(objective, features))


def _batch_objectives(model, micro_batch, objectives, config, n_total, feature_grads, offset):
    """The objectives of one micro-batch, scaled so that micro-batches add up to the batch's."""
    with record_function("hf_afr::forward"):
        outputs, values = _forward(model, micro_batch, objectives)
    with record_function("hf_afr::objectives"):
        return _objective_values(
            outputs,
            values,
            micro_batch,
            objectives,
            config,
            n_total,
            feature_grads,
            offset,
            model_config=model.config,
        )


def _objective_values(
    outputs, values, micro_batch, objectives, config, n_total, feature_grads, offset, model_config
):
    n = micro_batch["pixel_values"].shape[0]
    if "loss" in values:
        values["loss"] = values["loss"] * (n / n_total)
    if "refer" in objectives:
        features = layer_features(outputs.hidden_states, config, model_config)
        if feature_grads is None:
            values["refer"] = refer_objective(features, config.centers_features)
        else:  # surrogate whose gradient equals dR/dw restricted to these rows
            values["refer"] = sum(
                (f * g[offset : offset + n]).sum() for f, g in zip(features, feature_grads)
            )
    return [values[name] for name in objectives]


class _GradientSums:
    """Float32 sums of each objective's gradients, filled by post-accumulate-grad hooks."""

    def __init__(self, params: dict[str, nn.Parameter], num_objectives: int):
        self.params = params
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in range(num_objectives)]
        self.objective = 0
        names = {p: name for name, p in params.items()}
        # FSDP2 computes gradients of unsharded copies (not in the graph as `inputs`) and hands
        # the reduced shards to these hooks: the backward then runs over the whole graph.
        self.sharded = any(is_dtensor(p) for p in params.values())
        self.handles = [
            p.register_post_accumulate_grad_hook(functools.partial(self._take, name))
            for p, name in names.items()
        ]

    @torch.no_grad()
    def _take(self, name: str, param: torch.Tensor) -> None:
        grad, param.grad = param.grad, None
        sums = self.sums[self.objective]
        with record_function("hf_afr::accumulate"):
            if name in sums:
                sums[name].add_(grad)
            elif grad.dtype == torch.float32 and grad._base is None and grad.is_contiguous():
                sums[name] = grad  # autograd's fresh buffer: take it over, no copy
            else:
                sums[name] = grad.to(
                    torch.float32, memory_format=torch.contiguous_format, copy=True
                )

    def backward(self, objective: int, value: torch.Tensor, retain_graph: bool) -> None:
        self.objective = objective
        inputs = None if self.sharded else list(self.params.values())
        torch.autograd.backward(value, inputs=inputs, retain_graph=retain_graph)

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()

    def result(self) -> list[dict[str, torch.Tensor]]:
        """The sums in parameter order; a parameter an objective does not reach gets zeros."""
        return [
            {
                name: sums[name] if name in sums else torch.zeros_like(p, dtype=torch.float32)
                for name, p in self.params.items()
            }
            for sums in self.sums
        ]


def accumulate_gradients(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    params: dict[str, nn.Parameter],
    config,
    objectives: Sequence[str],
) -> list[dict[str, torch.Tensor]]:
    """Sum over batches of d(objective)/dw for each objective, as float32 tensors.

    All objectives of a batch come from one shared forward pass (one backward per objective).
    """
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"Unknown objectives {sorted(unknown)}; allowed: {OBJECTIVES}.")
    num_batches = 0
    checkpointing = bool(getattr(config, "gradient_checkpointing", False))
    with (
        scoring_mode(model, params, gradient_checkpointing=checkpointing),
        summed_gradients(model),  # FSDP2: reduce-scatter sums, as the all-reduce below
    ):
        accumulator = _GradientSums(params, len(objectives))
        try:
            for raw_batch in batches:
                batch = prepare_batch(raw_batch, model, needs_labels="loss" in objectives)
                _accumulate_batch(model, batch, objectives, config, accumulator)
                num_batches += 1
        finally:
            accumulator.remove_hooks()
    sums = accumulator.result()
    # Several processes: each scored its shard of the batches; sum so all ranks agree.
    num_batches = all_reduce_gradient_sums(sums, num_batches)
    if num_batches == 0:
        raise ValueError(
            "No scoring batches were given: pass an iterable (e.g. a DataLoader) that yields at "
            "least one dict with 'pixel_values' (and 'labels')."
        )
    return sums


def _accumulate_batch(model, batch, objectives, config, accumulator: _GradientSums) -> None:
    micro_batches = _micro_batches(batch, config.micro_batch_size)
    feature_grads = None
    if "refer" in objectives and len(micro_batches) > 1:
        with record_function("hf_afr::feature_grads"):
            feature_grads = _refer_feature_grads(model, micro_batches, config)
    n_total, offset = batch["pixel_values"].shape[0], 0
    for mb in micro_batches:
        values = _batch_objectives(model, mb, objectives, config, n_total, feature_grads, offset)
        offset += mb["pixel_values"].shape[0]
        for k, (name, value) in enumerate(zip(objectives, values)):
            with record_function(f"hf_afr::backward[{name}]"):
                accumulator.backward(k, value, retain_graph=k + 1 < len(values))


def connection_sensitivity(
    grads: dict[str, torch.Tensor], params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """|g * w| in float32, computed in place on the gradient buffers."""
    with torch.no_grad():
        return {name: grads[name].mul_(params[name].detach()).abs_() for name in params}
