"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters are DTensors, masks follow them.

hf_afr's masks are full boolean tensors keyed by parameter name, whatever the parallelism. On
a model sharded with FSDP2 each rank holds one shard of every parameter (a DTensor sharded
on dim 0 over a 1-D device mesh); `local_mask` cuts a full mask into the same shard, with the
parameter's own mesh and placements and no communication (every rank holds the same full
masks), so the mask and the weight shard line up entry for entry.

`full_state_dict` gathers the full weights (a collective: call it on every rank), which
`AFRPruner.save_pretrained` uses to write the same checkpoint as a DDP run.
"""

from __future__ import annotations

import torch
from torch import nn


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether `tensor` (or an `nn.Parameter` holding one) is a `DTensor`."""
    return type(tensor).__name__ == "DTensor" or type(getattr(tensor, "data", None)).__name__ == (
        "DTensor"
    )


def has_dtensor_parameters(model: nn.Module) -> bool:
    """Whether any parameter of `model` is a `DTensor` (FSDP2, tensor parallelism)."""
    return any(is_dtensor(p) for p in model.parameters())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or `tensor` itself.

    Call it under `torch.no_grad()` to change the shard in place.
    """
    return tensor.to_local() if is_dtensor(tensor) else tensor


def check_shardable(name: str, param: torch.Tensor) -> None:
    """Raise a `ValueError` unless `param` is sharded on dim 0 (or replicated) over a 1-D mesh,
    the layout of `fully_shard` that hf_afr's masks and selection handle."""
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(param.placements)
    ok = param.device_mesh.ndim == 1 and placements in ((Shard(0),), (Replicate(),))
    if not ok:
        raise ValueError(
            f"Parameter {name!r} is a DTensor with placements {placements} on a "
            f"{param.device_mesh.ndim}-D mesh; hf_afr supports FSDP2's layout (`fully_shard` on a "
            "1-D mesh: Shard(0)). Use `fully_shard(model)` without HSDP or tensor parallelism."
        )


def local_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of a full `mask` that lines up with this rank's shard of `param`.

    A plain `param` gets `mask` itself. For a DTensor the mask is distributed with the
    parameter's mesh and placements (`distribute_tensor(..., src_data_rank=None)`: each rank
    cuts its own shard, no communication) and the local shard is returned.
    """
    mask = mask.to(device=local_tensor(param.data).device)
    if not is_dtensor(param):
        return mask
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        mask, param.device_mesh, param.placements, src_data_rank=None
    ).to_local()


def shard_offsets(param: torch.Tensor) -> tuple[int, int]:
    """`(start, end)`: the flat positions of the full tensor held by this rank's shard.

    FSDP2 shards dim 0 in `torch.chunk` pieces, so a shard is a contiguous range of the
    row-major flattened tensor. A replicated DTensor or a plain tensor holds all of it.
    """
    from torch.distributed.tensor import Shard

    numel = param.numel()
    if not is_dtensor(param) or tuple(param.placements) != (Shard(0),):
        return 0, numel
    rows = param.shape[0]
    row = numel // rows if rows else 0
    rank, size = param.device_mesh.get_local_rank(), param.device_mesh.size()
    chunk = -(-rows // size)  # torch.chunk's piece size
    first = min(rank * chunk, rows)
    last = min(first + chunk, rows)
    return first * row, last * row


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a model with DTensor parameters, on the CPU.

    A collective: every rank must call it; rank 0 gets the full tensors, the others `{}`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """On rank 0, a plain CPU copy of an FSDP2 model with its full weights; `None` elsewhere.

    A collective (`full_state_dict`). The copy is a fresh instance of the model's own
    transformers class (without FSDP2's wrapper class), so it saves like an unsharded model.
    """
    from torch.distributed.fsdp import FSDPModule

    state = full_state_dict(model)
    if not state:
        return None
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    copy = cls(model.config)
    copy.load_state_dict(state)
    return copy.eval()


class summed_gradients:  # noqa: N801 - a context manager, named like one
    """Within it, FSDP2 sums gradients over ranks instead of averaging them (divide factor 1).

    Scoring sums the gradients of every rank's scoring batches, as the DDP path's all-reduce
    does; the modules' own divide factors are restored on exit.
    """

    def __init__(self, model: nn.Module):
        self.groups = []
        for module in model.modules():
            get_state = getattr(module, "_get_fsdp_state", None)
            if get_state is not None:
                self.groups.extend(get_state()._fsdp_param_groups)
        self.saved: list = []

    _SETTINGS = {"gradient_divide_factor": 1.0, "force_sum_reduction_for_comms": True}

    def __enter__(self) -> summed_gradients:
        # A plain SUM reduce-scatter: a divide factor alone would become a PREMUL_SUM by 1.0,
        # which gloo lacks.
        self.saved = [{k: getattr(g, k) for k in self._SETTINGS} for g in self.groups]
        for group in self.groups:
            for key, value in self._SETTINGS.items():
                setattr(group, key, value)
        return self

    def __exit__(self, *exc) -> None:
        for group, saved in zip(self.groups, self.saved):
            for key, value in saved.items():
                setattr(group, key, value)
