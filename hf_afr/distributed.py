"""Multi-process helpers: unwrap models, check the parallelism, agree on scores and masks.

Scoring in several processes gives the masks of one process on the same data: every rank
scores its own shard of the scoring batches (`shard_batches`) and the gradient sums are
all-reduced (`all_reduce_gradient_sums`, called by the criteria) before any mask is selected.
The SNIP/ReFer/AFR objectives are sums of per-batch objectives, so splitting the *list of
batches* across ranks is exact; splitting one batch across ranks would not be for ReFer.

Sharded parameters: FSDP2 (`fully_shard`, DTensor parameters) is supported (see
`hf_afr.sharding`); FSDP1 (`FullyShardedDataParallel`, flattened parameters) and DeepSpeed
ZeRO-3 (partitioned parameters) are refused with a line pointing to FSDP2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from accelerate.utils import extract_model_from_parallel
from torch import nn

T = TypeVar("T")

_FSDP1_CLASS = "FullyShardedDataParallel"

_SHARDED_HINT = (
    "hf_afr keeps masks exact on FSDP2's DTensor shards but not on {what}: use FSDP2 "
    "(`torch.distributed.fsdp.fully_shard`; `--fsdp full_shard` with `fsdp_config` "
    '{{"version": 2}}, or `fsdp_version: 2` in the accelerate config), DDP, or DeepSpeed ZeRO-1/2.'
)


def is_distributed() -> bool:
    """Whether `torch.distributed` is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """`(rank, world_size)`, `(0, 1)` outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def end_process_group() -> None:
    """Destroy the default process group, if one is initialized, while the interpreter is fully
    alive: left to interpreter teardown, gloo's worker threads can abort a finished process
    ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / DeepSpeed / `torch.compile` wrappers (unchanged).

    accelerate's `extract_model_from_parallel`; call `check_supported_model` first, since it
    would also unwrap FSDP1, whose flattened parameters masks cannot address. An FSDP2 model
    is its own unwrapped model (`fully_shard` changes the module in place).
    """
    return extract_model_from_parallel(model, keep_torch_compile=False)


def check_supported_model(model: nn.Module) -> None:
    """Raise a `ValueError` if the model's parameters are sharded in a way masks cannot follow
    (FSDP1's flattened parameters, DeepSpeed ZeRO-3 partitions, DTensors not laid out as FSDP2's).
    """
    from .sharding import check_shardable, is_dtensor

    for module in model.modules():
        if any(cls.__name__ == _FSDP1_CLASS for cls in type(module).__mro__):
            what = "FSDP1's flattened parameters (FullyShardedDataParallel)"
            raise ValueError(f"The model is wrapped in FSDP1. {_SHARDED_HINT.format(what=what)}")
    for name, p in model.named_parameters():
        if is_dtensor(p):
            check_shardable(name, p)
        if hasattr(p, "ds_id"):
            what = "DeepSpeed ZeRO-3 partitions"
            raise ValueError(
                f"Parameter {name!r} is partitioned by DeepSpeed ZeRO-3. "
                + _SHARDED_HINT.format(what=what)
            )


def check_supported_training_args(args: Any) -> None:
    """Refuse FSDP1 / DeepSpeed ZeRO-3 set in `TrainingArguments` or by `accelerate launch`
    (FSDP2 is accepted)."""
    fsdp_config = getattr(args, "fsdp_config", None) or {}
    if getattr(args, "fsdp", None) and int(fsdp_config.get("version", 2)) == 1:
        what = "FSDP1 (`fsdp_config` version 1)"
        raise ValueError(f"FSDP1 is enabled. {_SHARDED_HINT.format(what=what)}")
    if _env_flag("ACCELERATE_USE_FSDP") and os.environ.get("FSDP_VERSION", "1").strip() == "1":
        what = "FSDP1 (accelerate's default `fsdp_version: 1`)"
        raise ValueError(f"FSDP1 is enabled by accelerate. {_SHARDED_HINT.format(what=what)}")
    stage = _deepspeed_zero_stage(getattr(args, "deepspeed", None))
    if stage is None and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)
    if stage == 3:
        what = "DeepSpeed ZeRO-3 partitions"
        raise ValueError(f"DeepSpeed ZeRO stage 3 is enabled. {_SHARDED_HINT.format(what=what)}")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _deepspeed_zero_stage(config: dict | str | None) -> int | None:
    if not config:
        return None
    if isinstance(config, str):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    return int(stage) if str(stage).isdigit() else None


def shard_batches(batches: Sequence[T]) -> list[T]:
    """This rank's share of a list of scoring batches: entries `rank, rank + world, ...`."""
    rank, world_size = rank_and_world_size()
    return list(batches[rank::world_size])


def check_equal_batch_counts(
    batches: Any, num_batches: int, device: torch.device | str = "cpu"
) -> None:
    """Under FSDP2 every rank must run as many scoring backward passes (each one is a collective
    reduce-scatter): raise a `ValueError` on every rank if the sized `batches` differ in count."""
    if not is_distributed() or not hasattr(batches, "__len__"):
        return
    count = min(len(batches), num_batches)
    counts = torch.tensor([count, -count], device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if int(counts[0]) != -int(counts[1]):
        raise ValueError(
            f"With FSDP2 every process must score the same number of batches; they got "
            f"{-int(counts[1])} to {int(counts[0])}. Make `num_batches` a multiple of the number "
            "of processes (the scripts shard the batches with `shard_batches`)."
        )


@torch.no_grad()
def all_reduce_gradient_sums(sums: Sequence[dict[str, torch.Tensor]], num_batches: int) -> int:
    """Sum gradient sums (in place) and batch counts over all processes.

    A no-op outside a process group of several processes. Every rank must call it (it is
    collective): the result is identical on all ranks, so all of them select the same masks.

    Returns:
        `int`: the number of batches scored by all processes together.
    """
    if not is_distributed():
        return num_batches
    device = next((t.device for s in sums for t in s.values()), torch.device("cpu"))
    for per_objective in sums:
        for name in sorted(per_objective):  # the same order on every rank
            if type(per_objective[name]).__name__ != "DTensor":  # FSDP2 reduced it already
                dist.all_reduce(per_objective[name], op=dist.ReduceOp.SUM)
    count = torch.tensor([num_batches], dtype=torch.long, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return int(count.item())


@torch.no_grad()
def broadcast_masks(masks: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank `src`'s masks on every rank (a no-op in a single process)."""
    if not is_distributed():
        return masks
    synced = {}
    for name in sorted(masks):
        buffer = masks[name].to(torch.uint8).contiguous()
        dist.broadcast(buffer, src=src)
        synced[name] = buffer.bool()
    return {name: synced[name] for name in masks}
