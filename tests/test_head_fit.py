"""Scoring through a head fitted on the scoring batches (`PrunerConfig.fit_head`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from families import FAMILIES, tiny_batches, tiny_classifier
from helpers import tiny_vit

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.criteria.head_fit import L2_PENALTY, batch_features, fit_logistic_head, fitted_head

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


def leave_one_out(model, batches, i):
    """The head fitted to every batch but the i-th, computed here from plain features."""
    captured = []
    hook = model.classifier.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    with torch.no_grad():
        for batch in batches:
            model(pixel_values=batch["pixel_values"])
    hook.remove()
    x = torch.cat([f for j, f in enumerate(captured) if j != i])
    y = torch.cat([b["labels"] for j, b in enumerate(batches) if j != i])
    return x, fit_logistic_head(x, y, model.config.num_labels)


def test_each_batch_goes_through_a_head_fitted_to_the_others_and_the_model_is_unchanged():
    model, batches = tiny_vit(), tiny_batches(n_batches=3)
    with torch.no_grad():
        before = [model(pixel_values=b["pixel_values"]).logits for b in batches]
    state = copy.deepcopy(model.state_dict())
    with fitted_head(model, iter(batches)) as listed, torch.no_grad():
        assert len(listed) == 3
        for i, batch in enumerate(listed):
            _, (weight, bias) = leave_one_out(tiny_vit(), batches, i)
            features = []
            hook = model.classifier.register_forward_pre_hook(
                lambda m, a, found=features: found.append(a[0])
            )
            logits = model(pixel_values=batch["pixel_values"]).logits
            hook.remove()
            torch.testing.assert_close(logits, features[0] @ weight.T + bias)
            assert not torch.allclose(logits, before[i])
            half = model(pixel_values=batch["pixel_values"][:2]).logits  # a micro-batch
            torch.testing.assert_close(half, logits[:2], atol=1e-5, rtol=1e-4)
        with pytest.raises(RuntimeError, match="no scoring batch"):
            model(pixel_values=batches[0]["pixel_values"])  # the caller's tensor, not a listed one
    with torch.no_grad():
        for batch, logits in zip(batches, before):
            torch.testing.assert_close(model(pixel_values=batch["pixel_values"]).logits, logits)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_snip_through_fitted_heads_equals_snip_summed_over_models_given_those_heads():
    model, batches = tiny_vit(), tiny_batches(n_batches=3)
    pruner = AFRPruner(copy.deepcopy(model), PrunerConfig(method="snip", fit_head=True))
    scores = pruner.compute_scores(batches, show_progress=False)
    total = {}
    for i, batch in enumerate(batches):  # batch i's loss through the head fitted without it
        given = copy.deepcopy(model)
        _, (weight, bias) = leave_one_out(given, batches, i)
        with torch.no_grad():
            given.classifier.weight.copy_(weight)
            given.classifier.bias.copy_(bias)
        loss = F.cross_entropy(given(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        params = dict(given.named_parameters())
        grads = torch.autograd.grad(loss, [params[n] for n in scores])
        for name, grad in zip(scores, grads):
            total[name] = total.get(name, 0) + grad * params[name].detach()
    for name in scores:
        torch.testing.assert_close(scores[name], total[name].abs(), atol=1e-6, rtol=1e-4)
    plain = AFRPruner(model, PrunerConfig(method="snip")).compute_scores(batches, False)
    assert any(not torch.allclose(scores[n], plain[n]) for n in plain)


def test_a_single_scoring_batch_is_fitted_in_sample_with_a_warning(caplog):
    model, batches = tiny_vit(), tiny_batches(n_batches=1)
    with fitted_head(model, batches) as listed, torch.no_grad():
        logits = model(pixel_values=listed[0]["pixel_values"]).logits
    x, (weight, bias) = leave_one_out(tiny_vit(), batches + batches, 1)  # fitted on batch 0
    torch.testing.assert_close(logits, x @ weight.T + bias)
    assert "single scoring batch" in caplog.text


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
    off_state = off.model.state_dict()
    assert any(  # other units kept
        t.shape != off_state[n].shape or not torch.equal(t, off_state[n])
        for n, t in on.model.state_dict().items()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_a_head_that_can_be_fitted(family):
    model, batches = tiny_classifier(family), tiny_batches()
    for (features, labels), batch in zip(batch_features(model, batches), batches):
        assert features.shape[0] == labels.shape[0] == len(batch["labels"])
    with fitted_head(model, batches) as listed, torch.no_grad():
        logits = model(pixel_values=listed[0]["pixel_values"]).logits
    assert logits.shape == (len(batches[0]["labels"]), model.config.num_labels)
