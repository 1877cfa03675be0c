"""FSDP2 (`fully_shard`, DTensor parameters) on 2 CPU processes (gloo): exact masks.

One spawn runs everything sharded; the main process redoes it in one unsharded process,
which is the DDP computation (the gradient of the mean loss over the global batch).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_vit_config
from safetensors.torch import load_file
from transformers import ViTForImageClassification

from hf_afr import AFRPruner, PrunerConfig, enforce_masks, select_masks
from hf_afr.architectures import encoder_blocks
from hf_afr.distributed import shard_batches

CONFIG = dict(method="snip", sparsity=0.8, num_batches=2, min_density=0.02)
STEPS, CLIP = 3, 0.5
TIE_CASES = (
    dict(sparsity=0.7, scope="global"),
    dict(sparsity=0.6, scope="layerwise"),
    dict(sparsity=0.7, scope="global", min_density=0.25),
)


def tiny_model() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(tiny_vit_config(patch_size=4))


def batches(n: int, size: int = 4, seed: int = 7) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(size, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 3, (size,), generator=generator),
        }
        for _ in range(n)
    ]


def tied_scores() -> dict[str, torch.Tensor]:
    """Few distinct values (many ties across shards), rows not divisible by 2, a 1-row tensor."""
    generator = torch.Generator().manual_seed(3)
    shapes = {"a": (5, 4), "b": (1, 6), "c": (8, 3), "d": (3,)}
    return {n: torch.randint(0, 4, s, generator=generator).float() for n, s in shapes.items()}


def train(model, optimizer, rank: int, world_size: int) -> None:
    """STEPS AdamW steps on global batches of 8, this rank's share of each, with clipping."""
    model.train()
    for batch in batches(STEPS, size=8, seed=11):
        share = {k: v.chunk(world_size)[rank] for k, v in batch.items()}
        model(**share).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()


def _worker(rank: int, world_size: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    init = f"file://{os.path.abspath(folder)}/rendezvous"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (world_size,))
        tied = {
            i: select_masks(
                {n: distribute_tensor(s, mesh, [Shard(0)]) for n, s in tied_scores().items()},
                **case,
            )
            for i, case in enumerate(TIE_CASES)
        }
        a = distribute_tensor(tied_scores()["a"], mesh, [Shard(0)])  # rows of 4: 2:4 groups
        tied["2:4"] = select_masks({"a": a}, sparsity=0.5, pattern="2:4")
        model = tiny_model()
        for block in encoder_blocks(model).values():
            fully_shard(block)
        fully_shard(model)
        pruner = AFRPruner(model, PrunerConfig(**CONFIG))
        masks = pruner.prune(shard_batches(batches(2)), show_progress=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        enforcer = enforce_masks(model, masks, optimizer)
        train(model, optimizer, rank, world_size)
        violations = enforcer.violations(optimizer)
        pruner.save_pretrained(f"{folder}/fsdp")  # every rank takes part in the gather
        without_enforcer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        enforcer.detach()
        train(model, without_enforcer, rank, world_size)  # revives: the check can fail
        revived = enforcer.violations(without_enforcer)
        torch.save((tied, masks, violations, revived), f"{folder}/rank{rank}.pt")
        dist.barrier()  # no process tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    os._exit(0)  # done: skip the interpreter teardown, where stray gloo threads can abort


@pytest.mark.slow
def test_fsdp2_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    expected_tied = [select_masks(tied_scores(), **case) for case in TIE_CASES]
    pruner = AFRPruner(tiny_model(), PrunerConfig(**CONFIG))
    expected = pruner.prune(batches(2), show_progress=False)
    optimizer = torch.optim.AdamW(pruner.model.parameters(), lr=1e-2, weight_decay=0.1)
    enforce_masks(pruner.model, expected, optimizer)
    train(pruner.model, optimizer, 0, 1)
    pruner.save_pretrained(tmp_path / "single")

    for rank in (0, 1):
        tied, masks, violations, revived = torch.load(tmp_path / f"rank{rank}.pt")
        for i, case in enumerate(TIE_CASES):  # distributed selection == one process, ties too
            for name, mask in expected_tied[i].items():
                assert torch.equal(tied[i][name], mask), (case, name)
        nm = select_masks({"a": tied_scores()["a"]}, sparsity=0.5, pattern="2:4")["a"]
        assert torch.equal(tied["2:4"]["a"], nm)
        assert masks.keys() == expected.keys()
        for name, mask in expected.items():  # sharded scoring + selection == one process
            assert torch.equal(masks[name], mask), name
        assert violations == {}  # weights and AdamW moments, summed over both ranks
        assert revived  # without the enforcer, weight decay and Adam revive pruned weights

    files = [load_file(tmp_path / run / "model.safetensors") for run in ("fsdp", "single")]
    assert files[0].keys() == files[1].keys()  # the same checkpoint layout
    sharded = dict(ViTForImageClassification.from_pretrained(tmp_path / "fsdp").named_parameters())
    single = dict(pruner.model.named_parameters())
    for name, mask in expected.items():
        assert int(torch.count_nonzero(sharded[name][~mask])) == 0, name  # 0 revived weights
    # Updates are ~1e-2 (lr 1e-2, 3 steps); summation order leaves ~1e-7, and ~2e-6 on the
    # key biases, whose exact gradient is 0 (softmax ignores them): Adam scales up the noise.
    for name, weight in single.items():
        torch.testing.assert_close(sharded[name], weight, rtol=1e-5, atol=1e-5, msg=name)
