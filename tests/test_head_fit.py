"""Scoring through a head fitted on the scoring batches (`PrunerConfig.fit_head`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from families import FAMILIES, tiny_batches, tiny_classifier
from helpers import tiny_vit

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.criteria.head_fit import L2_PENALTY, fit_logistic_head, fitted_head, head_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_fitted_head_minimises_the_penalised_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=generator)
    y = torch.randint(0, 3, (40,), generator=generator)
    for l2 in (L2_PENALTY, 0.05):
        weight, bias = fit_logistic_head(x, y, num_labels=3, l2=l2)
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * w.square().sum()
        grad_w, grad_b = torch.autograd.grad(loss, (w, b))
        assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4  # a stationary point

    def objective(w, b):  # strongly convex enough for plain gradient descent to converge
        return F.cross_entropy(x @ w.T + b, y) + 0.05 * w.square().sum()

    # a second solver, written differently: plain gradient descent from another start
    w2 = torch.randn(3, 6, generator=generator).requires_grad_()
    b2 = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([w2, b2], lr=0.5)
    for _ in range(3000):
        optimizer.zero_grad()
        objective(w2, b2).backward()
        optimizer.step()
    torch.testing.assert_close(weight, w2.detach(), atol=2e-3, rtol=0)
    assert objective(weight, bias) <= objective(w2.detach(), b2.detach()) + 1e-6


def test_while_open_the_model_outputs_the_fitted_logits_and_is_unchanged_after():
    model = tiny_vit()
    batches = tiny_batches()
    x = batches[0]["pixel_values"]
    with torch.no_grad():
        before = model(pixel_values=x).logits
    state = copy.deepcopy(model.state_dict())
    features, labels = head_inputs(model, batches)
    weight, bias = fit_logistic_head(features, labels, model.config.num_labels)
    with fitted_head(model, iter(batches)) as listed, torch.no_grad():
        assert len(listed) == len(batches)
        fitted = model(pixel_values=x).logits
        torch.testing.assert_close(fitted, features[: len(x)] @ weight.T + bias)
        assert not torch.allclose(fitted, before)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, before)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_snip_through_the_fitted_head_equals_snip_of_a_model_given_that_head():
    model, batches = tiny_vit(), tiny_batches()
    fitted = AFRPruner(copy.deepcopy(model), PrunerConfig(method="snip", fit_head=True))
    scores = fitted.compute_scores(batches, show_progress=False)
    features, labels = head_inputs(model, batches)
    weight, bias = fit_logistic_head(features, labels, model.config.num_labels)
    given = copy.deepcopy(model)
    with torch.no_grad():
        given.classifier.weight.copy_(weight)
        given.classifier.bias.copy_(bias)
    expected = AFRPruner(given, PrunerConfig(method="snip")).compute_scores(
        batches, show_progress=False
    )
    plain = AFRPruner(model, PrunerConfig(method="snip")).compute_scores(
        batches, show_progress=False
    )
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name])
    assert any(not torch.allclose(scores[n], plain[n]) for n in plain)


def test_structured_pruning_fits_the_head_by_default_and_the_option_is_checked():
    assert PrunerConfig(method="afr", structure="heads+mlp").fits_head
    assert PrunerConfig(method="snip", structure="mlp").fits_head
    assert not PrunerConfig(method="refer", structure="mlp").fits_head  # reads no loss
    assert not PrunerConfig(method="magnitude", structure="mlp").fits_head
    assert not PrunerConfig(method="afr").fits_head  # unstructured: the paper's setting
    assert PrunerConfig(method="afr", fit_head=True).fits_head
    assert not PrunerConfig(method="afr", structure="mlp", fit_head=False).fits_head
    with pytest.raises(ValueError, match="`fit_head` must be True, False or None"):
        PrunerConfig(fit_head="yes")
    model, batches = tiny_vit(), tiny_batches()
    config = PrunerConfig(method="snip", sparsity=0.3, structure="mlp")
    on = AFRPruner(copy.deepcopy(model), config)
    on.prune(batches, show_progress=False)
    off = AFRPruner(copy.deepcopy(model), PrunerConfig(**{**config.to_dict(), "fit_head": False}))
    off.prune(batches, show_progress=False)
    assert on.model.config.layer_intermediate_sizes != off.model.config.layer_intermediate_sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_head_that_can_be_fitted(family):
    model, batches = tiny_classifier(family), tiny_batches()
    features, labels = head_inputs(model, batches)
    assert features.shape[0] == labels.shape[0] == sum(len(b["labels"]) for b in batches)
    with fitted_head(model, batches), torch.no_grad():
        logits = model(pixel_values=batches[0]["pixel_values"]).logits
    assert logits.shape == (len(batches[0]["labels"]), model.config.num_labels)
