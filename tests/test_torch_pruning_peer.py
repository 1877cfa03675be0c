"""The peer benchmark's own checks, without Torch-Pruning installed: the recipe's import on
transformers 5 and the exactness check of a pruned model against its dense original."""

import copy

import torch
from helpers import tiny_vit
from test_benchmarks import load


def _keep(linear: torch.nn.Linear, index: torch.Tensor, rows: bool) -> torch.nn.Linear:
    weight = linear.weight[index] if rows else linear.weight[:, index]
    bias = linear.bias if linear.bias is None or not rows else linear.bias[index]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _remove(model, v_head: int = 1):
    """Layer 0 loses head 1 (q/k) and head `v_head` (v/o); layer 1 loses its even MLP units."""
    model = copy.deepcopy(model)
    attention, mlp = model.vit.layers[0].attention, model.vit.layers[1].mlp
    qk = torch.arange(16)  # head 0 of 2, head_dim 16
    v = torch.arange(16) + 16 * (1 - v_head)
    attention.q_proj = _keep(attention.q_proj, qk, rows=True)
    attention.k_proj = _keep(attention.k_proj, qk, rows=True)
    attention.v_proj = _keep(attention.v_proj, v, rows=True)
    attention.o_proj = _keep(attention.o_proj, v, rows=False)
    attention.num_attention_heads = 1
    odd = torch.arange(1, 64, 2)
    mlp.fc1, mlp.fc2 = _keep(mlp.fc1, odd, rows=True), _keep(mlp.fc2, odd, rows=False)
    return model


def test_the_published_recipe_import_fails_on_transformers_5():
    peer = load("torch_pruning_peer")
    error = peer.recipe_import_error()
    assert error.startswith("ImportError: cannot import name 'ViTSelfAttention'")


def test_exactness_check_accepts_a_true_removal_and_rejects_others():
    peer = load("torch_pruning_peer")
    dense = tiny_vit()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert peer.exact_removal(dense, _remove(dense), x).startswith("exact")
    # q/k of head 0 kept with v/o of head 1: every row is the dense model's, the output is not
    assert peer.exact_removal(dense, _remove(dense, v_head=0), x).startswith("differs")
    changed = _remove(dense)
    with torch.no_grad():
        changed.vit.layers[1].mlp.fc1.weight[3, 0] += 1.0
    assert "is not one of the dense model's" in peer.exact_removal(dense, changed, x)
