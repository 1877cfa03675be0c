"""GraSP, Fisher and SynFlow against independent computations: finite differences of the
gradient, per-sample backward passes, a closed-form path norm and a second implementation."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from families import FAMILIES, tiny_classifier
from families import tiny_batches as family_batches
from helpers import tiny_batches, tiny_vit
from torch import nn

from hf_afr import PrunerConfig, find_prunable_parameters, get_criterion, select_masks
from hf_afr.criteria.synflow import synflow_sparsities


def scores_of(method, model, batches, **config_kwargs):
    config = PrunerConfig(method=method, **config_kwargs)
    params = find_prunable_parameters(model, config)
    return get_criterion(method).score(model, batches, params, config), params


# --- Fisher ---------------------------------------------------------------------------------


def fisher_by_per_sample_backward(model, batches, names):
    """0.5 * sum_n (dL_n/dw)^2 * w^2 from one ordinary backward pass per sample."""
    params = dict(model.named_parameters())
    total = {name: torch.zeros_like(params[name]) for name in names}
    for batch in batches:
        for x, y in zip(batch["pixel_values"], batch["labels"]):
            model.zero_grad()
            logits = model(pixel_values=x[None]).logits
            F.cross_entropy(logits, y[None]).backward()
            for name in names:
                total[name] += params[name].grad.square()
    model.zero_grad()
    return {name: 0.5 * total[name] * params[name].detach().square() for name in names}


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_fisher_equals_a_loop_of_per_sample_backward_passes(micro_batch_size):
    # Patch embedding (Conv2d) and classifier (Linear on pooled features) included.
    model, batches = tiny_vit(), tiny_batches(2, batch_size=5)
    scores, params = scores_of(
        "fisher",
        model,
        batches,
        prune_patch_embeddings=True,
        prune_classifier=True,
        micro_batch_size=micro_batch_size,
    )
    assert "vit.embeddings.patch_embeddings.projection.weight" in params
    assert "classifier.weight" in params
    expected = fisher_by_per_sample_backward(tiny_vit(), batches, list(params))
    for name, s in scores.items():
        torch.testing.assert_close(s, expected[name], rtol=1e-4, atol=1e-12)
    # Not the square of the summed gradient: the per-sample squares matter.
    snip, _ = scores_of("snip", model, batches)
    name = "vit.layers.0.mlp.fc1.weight"
    assert not torch.allclose(scores[name], 0.5 * snip[name].square(), rtol=0.1)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_fisher_per_sample_layout_holds_in_every_family(model_type):
    # Swin's window attention puts windows x samples along the first dimension.
    model = tiny_classifier(model_type)
    batches = family_batches(1, batch_size=3)
    scores, params = scores_of("fisher", model, batches)
    expected = fisher_by_per_sample_backward(model, batches, list(params))
    for name, s in scores.items():
        torch.testing.assert_close(s, expected[name], rtol=1e-4, atol=1e-12)


def test_fisher_refuses_a_layer_it_cannot_split_per_sample():
    model = tiny_vit()
    config = PrunerConfig(method="fisher", target_modules=["layernorm_before"])
    params = {n: p for n, p in model.named_parameters() if n.endswith("layernorm_before.weight")}
    with pytest.raises(ValueError, match="nn.Linear and nn.Conv2d weights only"):
        get_criterion("fisher").score(model, tiny_batches(1), params, config)


# --- GraSP ----------------------------------------------------------------------------------


def loss_gradient(model, batches, names):
    params = dict(model.named_parameters())
    model.zero_grad()
    for batch in batches:
        model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.backward()
    grads = {name: params[name].grad.clone() for name in names}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("micro_batch_size", [None, 3])
def test_grasp_matches_finite_differences_of_the_gradient_along_g(micro_batch_size):
    model = tiny_vit().double()
    batches = [
        {"pixel_values": b["pixel_values"].double(), "labels": b["labels"]}
        for b in tiny_batches(2, batch_size=5)
    ]
    scores, params = scores_of("grasp", model, batches, micro_batch_size=micro_batch_size)
    names = list(params)
    reference = copy.deepcopy(model)
    ref_params = dict(reference.named_parameters())
    g = loss_gradient(reference, batches, names)
    eps = 1e-5
    shifted = []
    for sign in (1, -1):
        with torch.no_grad():
            for name in names:
                ref_params[name].add_(sign * eps * g[name])
        shifted.append(loss_gradient(reference, batches, names))
        with torch.no_grad():
            for name in names:
                ref_params[name].sub_(sign * eps * g[name])
    for name in names:
        hg = (shifted[0][name] - shifted[1][name]) / (2 * eps)
        expected = -(params[name].detach() * hg).float()
        torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-9)
    assert any((s > 0).any() and (s < 0).any() for s in scores.values())  # signed scores


def test_grasp_refuses_gradient_checkpointing():
    with pytest.raises(ValueError, match="double backward"):
        scores_of("grasp", tiny_vit(), tiny_batches(1), gradient_checkpointing=True)


# --- SynFlow --------------------------------------------------------------------------------


class TwoLayerNet(nn.Module):
    """x (flattened ones) -> W1 -> ReLU -> W2 -> logits, no biases: R = 1^T |W2| |W1| 1."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(image_size=2, num_channels=1)
        self.fc1 = nn.Linear(4, 5, bias=False)
        self.fc2 = nn.Linear(5, 3, bias=False)

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.fc2(torch.relu(self.fc1(pixel_values.flatten(1)))))


@pytest.mark.parametrize("scale", [1.0, 1e25], ids=["float32", "overflow-to-float64"])
def test_synflow_one_round_is_the_closed_form_path_norm_gradient(scale):
    # At scale 1e25, R ~ 1e51 overflows float32: the round is redone in float64.
    torch.manual_seed(0)
    net = TwoLayerNet()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    params = dict(net.named_parameters())
    config = PrunerConfig(method="synflow", synflow_iterations=1)
    scores = get_criterion("synflow").score(net, None, params, config)
    a1, a2 = net.fc1.weight.detach().abs().double(), net.fc2.weight.detach().abs().double()
    # dR/d|W1|_ij = sum_k |W2|_ki (times the input, 1); dR/d|W2|_ki = sum_j |W1|_ij.
    expected = {
        "fc1.weight": a2.sum(0)[:, None] * a1,
        "fc2.weight": a2 * a1.sum(1)[None, :],
    }
    top = max(e.max() for e in expected.values())
    for name, e in expected.items():
        torch.testing.assert_close(scores[name], (e / top).float(), rtol=1e-5, atol=1e-9)
    # Conservation in a homogeneous net: both layers carry the whole flow R.
    torch.testing.assert_close(expected["fc1.weight"].sum(), expected["fc2.weight"].sum())


def synflow_by_hand(model, names, sparsity, iterations):
    """Rounds on a copy whose parameters are made positive in place, masks multiplied into the
    weights; returns the final masks."""
    net = copy.deepcopy(model).eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.abs_()
    original = {name: params[name].detach().clone() for name in names}
    masks = {name: torch.ones_like(original[name], dtype=torch.bool) for name in names}
    size = model.config.image_size
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for name in names:
                params[name].copy_(original[name] * masks[name])
        net.zero_grad()
        net(pixel_values=torch.ones(1, 3, size, size)).logits.sum().backward()
        scores = {name: (params[name].grad * params[name]).abs() for name in names}
        top = max(s.max() for s in scores.values())
        # Already pruned weights rank below all others, as their score (0) may tie a kept one's.
        ranked = {n: (s / top).float().masked_fill(~masks[n], -1.0) for n, s in scores.items()}
        masks = select_masks(ranked, 1 - (1 - sparsity) ** (k / iterations))
    return masks


def test_synflow_rounds_match_a_second_implementation_and_differ_from_one_shot():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsity = 0.8
    scores, params = scores_of("synflow", model, None, sparsity=sparsity, synflow_iterations=4)
    masks = select_masks(scores, sparsity)
    expected = synflow_by_hand(model, list(params), sparsity, 4)
    assert all(torch.equal(masks[n], expected[n]) for n in params)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    one_shot, _ = scores_of("synflow", model, None, sparsity=sparsity, synflow_iterations=1)
    one_shot_masks = select_masks(one_shot, sparsity)
    assert not all(torch.equal(masks[n], one_shot_masks[n]) for n in params)
    for k, v in model.state_dict().items():  # the model's weights are untouched
        assert torch.equal(v, before[k]), k


def test_synflow_schedule_and_layerwise_rounds():
    assert synflow_sparsities(0.99, 2) == pytest.approx([0.9, 0.99])
    model = tiny_vit()
    scores, params = scores_of(
        "synflow", model, None, sparsity=0.9, scope="layerwise", synflow_iterations=3
    )
    masks = select_masks(scores, 0.9, scope="layerwise")
    for name, m in masks.items():
        assert int((~m).sum()) == round(0.9 * m.numel()), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"synflow_iterations": 0}, "`synflow_iterations` must be an integer >= 1"),
        ({"synflow_iterations": 2.5}, "`synflow_iterations` must be an integer >= 1"),
    ],
)
def test_synflow_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrunerConfig(method="synflow", **kwargs)


def test_synflow_with_nm_pattern_needs_one_round():
    with pytest.raises(ValueError, match="no N:M form"):
        scores_of("synflow", tiny_vit(), None, pattern="2:4", synflow_iterations=5)
    scores, _ = scores_of("synflow", tiny_vit(), None, pattern="2:4", synflow_iterations=1)
    assert all(torch.isfinite(s).all() for s in scores.values())
