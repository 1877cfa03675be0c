"""The masks of `select_masks` from scores sharded over ranks (FSDP2), without gathering them.

Each rank holds a shard of every score tensor (`hf_afr.sharding`: dim 0 in `torch.chunk`
pieces, a contiguous range of the flattened tensor). The global selection prunes the `k`
lowest of all scores, ties broken by position (the earlier one first) in the order of
`select_masks`: tensors in dict order, entries in row-major order. Here:

1. Scores become order-preserving int32 keys (the float's bits, negatives flipped; -0.0 is
   turned into +0.0 first, as the two compare equal).
2. The k-th smallest key is found by bisection over the key range: 32 rounds, each one count
   of the local keys `<= mid` summed over ranks (one scalar all-reduce per round).
3. Keys below it are pruned; of the keys equal to it, the number still missing is pruned in
   global order: the per-(tensor, rank) tie counts are all-gathered (one small vector per
   rank), which tells each rank how many of its own ties come first.

Communication: 33 scalar all-reduces and one all-gather of a vector as long as the number of
tensors per selection (once per tensor for `scope="layerwise"` and for `min_density`), plus
one all-reduce of the uint8 masks to give every rank the full masks. No score leaves its rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .sharding import is_dtensor, local_tensor, shard_offsets

_INF_KEY = 0x7F800000  # the key of +inf


def _keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as the float32 scores (-0.0 and +0.0 get the same key)."""
    bits = (scores.reshape(-1).float() + 0.0).view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long()


def _owned(name: str, score: torch.Tensor, rank: int) -> tuple[torch.Tensor, int, int]:
    """The keys of the entries this rank decides on, and their flat range in the tensor.

    A Shard(0) DTensor: its local shard. A replicated or plain tensor: rank 0 decides it all.
    """
    start, end = shard_offsets(score)
    keys = _keys(local_tensor(score))
    if (start, end) == (0, score.numel()) and rank != 0:
        return keys[:0], 0, 0
    return keys, start, end


def _group():
    return dist.group.WORLD


def _sum(value: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(value, group=_group())
    return value


def _prune_lowest(keys: list[torch.Tensor], num_pruned: int) -> list[torch.Tensor]:
    """Per local key tensor, the entries pruned by pruning the `num_pruned` globally lowest."""
    device = keys[0].device if keys else torch.device("cpu")
    flat = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
    total = int(_sum(torch.tensor([flat.numel()], device=device)).item())
    if num_pruned <= 0:
        return [torch.zeros_like(k, dtype=torch.bool) for k in keys]
    if num_pruned >= total:
        return [torch.ones_like(k, dtype=torch.bool) for k in keys]
    lo, hi = -(2**31), 2**31 - 1  # smallest key t with count(keys <= t) >= num_pruned
    while lo < hi:
        mid = (lo + hi) // 2
        count = _sum(torch.tensor([int((flat <= mid).sum())], device=device))
        if int(count.item()) >= num_pruned:
            hi = mid
        else:
            lo = mid + 1
    below = [k < lo for k in keys]
    num_below = int(_sum(torch.tensor([sum(int(b.sum()) for b in below)], device=device)).item())
    ties = [k == lo for k in keys]
    counts = torch.tensor([int(t.sum()) for t in ties], dtype=torch.long, device=device)
    gathered = [torch.empty_like(counts) for _ in range(dist.get_world_size(_group()))]
    dist.all_gather(gathered, counts, group=_group())
    table = torch.stack(gathered)  # [rank, tensor]
    rank = dist.get_rank(_group())
    missing = num_pruned - num_below
    pruned = []
    for i, (b, t) in enumerate(zip(below, ties)):
        before = int(table[:, :i].sum()) + int(table[:rank, i].sum())
        take = max(0, min(int(table[rank, i]), missing - before))
        positions = torch.nonzero(t).squeeze(1)[:take]
        b[positions] = True
        pruned.append(b)
    return pruned


def full_masks(
    local_kept: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Full boolean masks on every rank from the kept flags each rank decided on.

    `local_kept[name]` holds this rank's entries of `_owned` (flattened, possibly empty).
    """
    rank = dist.get_rank(_group())
    masks = {}
    for name, score in scores.items():
        _, start, end = _owned(name, score, rank)
        device = local_tensor(score).device
        full = torch.zeros(score.numel(), dtype=torch.uint8, device=device)
        full[start:end] = local_kept[name].reshape(-1).to(torch.uint8)
        masks[name] = _sum(full).bool().view(score.shape)
    return masks


def select_sharded_masks(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str, min_density: float
) -> dict[str, torch.Tensor]:
    """`select_masks` (validated arguments, no N:M pattern) for scores with DTensors.

    A collective: every rank calls it with its shards of the same scores and gets the same
    full masks, equal to those of `select_masks` on the full scores in one process.
    """
    rank = dist.get_rank(_group())
    owned = {name: _owned(name, s, rank)[0] for name, s in scores.items()}
    if scope == "layerwise":
        pruned = {
            name: _prune_lowest([keys], round(sparsity * scores[name].numel()))[0]
            for name, keys in owned.items()
        }
        return full_masks({name: ~p for name, p in pruned.items()}, scores)
    names = list(scores)
    num_pruned = round(sparsity * sum(s.numel() for s in scores.values()))
    if min_density > 0:
        forced_total = 0
        for name in names:
            n = scores[name].numel()
            num_kept = math.ceil(min_density * n - 1e-9)
            forced = ~_prune_lowest([owned[name]], n - num_kept)[0]
            forced_total += num_kept
            owned[name] = owned[name].masked_fill(forced, _INF_KEY)
        total = sum(s.numel() for s in scores.values())
        if total - forced_total < num_pruned:
            raise ValueError(
                f"min_density={min_density} keeps {forced_total} weights, leaving too few to "
                f"reach sparsity {sparsity}; lower `min_density` or `sparsity`."
            )
    pruned = _prune_lowest([owned[name] for name in names], num_pruned)
    return full_masks({name: ~p for name, p in zip(names, pruned)}, scores)


def is_sharded(scores: dict[str, torch.Tensor]) -> bool:
    """Whether any score tensor is a DTensor (the selection must then be distributed)."""
    return any(is_dtensor(s) for s in scores.values())
