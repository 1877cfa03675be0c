"""`hf_afr.distributed`: unwrapping, refusing sharded parameters, agreeing on scores and masks."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import tiny_vit_config
from torch import nn
from transformers import ViTForImageClassification

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.distributed import (
    broadcast_masks,
    check_supported_model,
    check_supported_training_args,
    shard_batches,
    unwrap_model,
)
from hf_afr.enforcement import MaskEnforcer


def tiny_model(seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(tiny_vit_config(patch_size=4))


def scoring_batches(n: int, size: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        {
            "pixel_values": torch.randn(size, 3, 32, 32, generator=generator),
            "labels": torch.randint(0, 3, (size,), generator=generator),
        }
        for _ in range(n)
    ]


def rendezvous(folder) -> str:
    """A file-based rendezvous: no port to pick, so no race with other runs on the machine."""
    return f"file://{os.path.abspath(folder)}/rendezvous"


@pytest.fixture
def single_process_group(tmp_path):
    """A gloo process group of one process (enough to build a real DDP wrapper)."""
    dist.init_process_group("gloo", init_method=rendezvous(tmp_path), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_unwrap_model_strips_ddp_dataparallel_and_compile(single_process_group):
    model = tiny_model()
    assert unwrap_model(nn.parallel.DistributedDataParallel(model)) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(nn.parallel.DistributedDataParallel(model))) is model
    assert unwrap_model(model) is model


def test_enforcer_finds_parameters_through_ddp(single_process_group):
    model = tiny_model()
    pruner = AFRPruner(model, PrunerConfig(method="magnitude", sparsity=0.5))
    masks = pruner.prune()
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
    MaskEnforcer(ddp, masks).attach(optimizer)
    for batch in scoring_batches(2):
        ddp(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    MaskEnforcer(model, masks).verify(optimizer)


@pytest.mark.parametrize(
    "args",
    [
        SimpleNamespace(fsdp="full_shard", fsdp_config={"version": 1}, deepspeed=None),
        SimpleNamespace(fsdp=None, deepspeed={"zero_optimization": {"stage": 3}}),
    ],
)
def test_fsdp1_and_zero3_training_are_refused_naming_fsdp2(args):
    with pytest.raises(ValueError, match="use FSDP2"):
        check_supported_training_args(args)


def test_fsdp2_training_args_are_accepted():
    check_supported_training_args(  # transformers' default FSDP version is 2
        SimpleNamespace(fsdp="full_shard", fsdp_config={}, deepspeed=None)
    )
    check_supported_training_args(
        SimpleNamespace(fsdp="full_shard", fsdp_config={"version": 2}, deepspeed=None)
    )


def test_zero3_json_file_and_accelerate_env_are_refused(tmp_path, monkeypatch):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        check_supported_training_args(SimpleNamespace(fsdp=None, deepspeed=str(config)))
    check_supported_training_args(  # ZeRO-2 keeps full parameters on every rank
        SimpleNamespace(fsdp=None, deepspeed={"zero_optimization": {"stage": 2}})
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP1 is enabled by accelerate"):
        check_supported_training_args(SimpleNamespace(fsdp=None, deepspeed=None))
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_supported_training_args(SimpleNamespace(fsdp=None, deepspeed=None))


def test_fsdp1_and_zero3_models_are_refused():
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's FSDP1 wrapper
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(ValueError, match="wrapped in FSDP1"):
        check_supported_model(FullyShardedDataParallel(tiny_model()))
    model = tiny_model()
    model.classifier.weight.ds_id = 3  # what DeepSpeed ZeRO-3 sets on partitioned parameters
    with pytest.raises(ValueError, match="ZeRO-3"):
        MaskEnforcer(model, {})


def test_single_process_helpers_are_no_ops():
    assert shard_batches([1, 2, 3]) == [1, 2, 3]
    masks = {"a": torch.tensor([True, False])}
    assert broadcast_masks(masks) is masks


# ---------------------------------------------------------------------------------------
# Two real processes (gloo)


# refer with 1 batch: rank 1 scores nothing; snip through a head fitted to both ranks' batches
CASES = (("afr", 2, None), ("refer", 1, None), ("snip", 2, True))


def _score_worker(rank, world_size, folder):
    dist.init_process_group(
        "gloo", init_method=rendezvous(folder), rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        results = {}
        for method, num_batches, fit_head in CASES:
            config = PrunerConfig(
                method=method, sparsity=0.8, num_batches=num_batches, fit_head=fit_head
            )
            pruner = AFRPruner(tiny_model(), config)
            batches = shard_batches(scoring_batches(num_batches))
            scores = pruner.compute_scores(batches, show_progress=False)
            masks = pruner.prune(batches, show_progress=False)
            if rank == 1:  # rank 0's masks win, whatever rank 1 holds
                masks = {name: torch.zeros_like(m) for name, m in masks.items()}
            results[method] = (scores, pruner.masks, broadcast_masks(masks))
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_score_like_one(tmp_path):
    mp.spawn(_score_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    for method, num_batches, fit_head in CASES:
        config = PrunerConfig(
            method=method, sparsity=0.8, num_batches=num_batches, fit_head=fit_head
        )
        single = AFRPruner(tiny_model(), config)
        expected_scores = single.compute_scores(scoring_batches(num_batches), False)
        expected_masks = single.prune(scoring_batches(num_batches), False)
        for rank in (0, 1):
            scores, masks, synced = torch.load(tmp_path / f"rank{rank}.pt")[method]
            for name in expected_masks:
                assert torch.equal(scores[name], expected_scores[name]), (method, rank, name)
                assert torch.equal(masks[name], expected_masks[name]), (method, rank, name)
                assert torch.equal(synced[name], expected_masks[name]), (method, rank, name)


def test_a_script_that_finishes_destroys_its_process_group_and_one_that_fails_does_not(tmp_path):
    from hf_afr.workflow.runner import run_script

    dist.init_process_group("gloo", init_method=rendezvous(tmp_path), rank=0, world_size=1)
    try:
        assert run_script("prog", lambda argv: (_ for _ in ()).throw(ValueError("bad")), []) == 1
        assert dist.is_initialized()  # a failed rank leaves it to the launcher
        assert run_script("prog", lambda argv: None, []) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
