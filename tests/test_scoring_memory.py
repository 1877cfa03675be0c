"""The scoring engine's memory options change no score: gradient checkpointing, micro-batches."""

import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import PrunerConfig, find_prunable_parameters, get_criterion
from hf_afr.criteria.gradients import accumulate_gradients, checkpointed_layers


def scores_of(method, model, batches, **config_kwargs):
    config = PrunerConfig(method=method, **config_kwargs)
    params = find_prunable_parameters(model, config)
    return get_criterion(method).score(model, batches, params, config)


def count_layer_forwards(model) -> list[int]:
    """Calls of the first layer's fc1, recomputations under checkpointing included."""
    calls = [0]
    model.vit.layers[0].mlp.fc1.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    return calls


@pytest.mark.parametrize("method", ["snip", "refer", "afr"])
@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_gradient_checkpointing_gives_the_same_scores(method, micro_batch_size):
    model, batches = tiny_vit(), tiny_batches(2, batch_size=5)
    calls = count_layer_forwards(model)
    plain = scores_of(method, model, batches, micro_batch_size=micro_batch_size)
    plain_calls, calls[0] = calls[0], 0
    checkpointed = scores_of(
        method, model, batches, micro_batch_size=micro_batch_size, gradient_checkpointing=True
    )
    # Checkpointing is effective: every backward pass recomputes the layer once more.
    backward_passes = 2 * (2 if method == "afr" else 1) * (1 if micro_batch_size is None else 3)
    assert calls[0] == plain_calls + backward_passes
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0)


def test_gradient_checkpointing_keeps_dropout_off_and_restores_the_model():
    # With dropout in the config, any layer switched to training mode would change the scores.
    model = tiny_vit(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    batches = tiny_batches(1)
    model.activation_checkpointing_enable()
    model.train()
    flags = {
        m: m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")
    }
    plain = scores_of("afr", model, batches)
    checkpointed = scores_of("afr", model, batches, gradient_checkpointing=True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0)
    assert model.training and all(m.training for m in model.modules())
    assert {m: m.gradient_checkpointing for m in flags} == flags
    assert all("forward" not in layer.__dict__ for layer in model.vit.layers)


def test_checkpointed_layers_restores_an_instance_forward_and_refuses_plain_modules():
    model = tiny_vit()
    own_forward = model.vit.layers[1].forward
    model.vit.layers[1].forward = own_forward  # an instance attribute, as other wrappers set
    with checkpointed_layers(model) as layers:
        assert len(layers) == 2
        assert model.vit.layers[0].forward is not own_forward
    assert model.vit.layers[1].__dict__["forward"] is own_forward
    assert "forward" not in model.vit.layers[0].__dict__
    with (
        pytest.raises(ValueError, match="GradientCheckpointingLayer"),
        checkpointed_layers(torch.nn.Linear(2, 2)),
    ):
        pass


def test_scoring_keeps_existing_gradients_and_allocates_no_grad():
    model, batches = tiny_vit(), tiny_batches(1)
    weight = model.vit.layers[0].mlp.fc1.weight
    weight.grad = torch.full_like(weight, 3.0)
    before = scores_of("snip", tiny_vit(), batches)
    after = scores_of("snip", model, batches)
    torch.testing.assert_close(
        after["vit.layers.0.mlp.fc1.weight"], before["vit.layers.0.mlp.fc1.weight"]
    )
    assert torch.equal(weight.grad, torch.full_like(weight, 3.0))
    assert all(p.grad is None for p in model.parameters() if p is not weight)


def test_a_parameter_an_objective_does_not_reach_gets_zero_gradients():
    # The classifier does not affect the features, so dR/dW_classifier = 0 exactly.
    model, batches = tiny_vit(), tiny_batches(1)
    config = PrunerConfig(method="afr", prune_classifier=True)
    params = find_prunable_parameters(model, config)
    loss_grads, refer_grads = accumulate_gradients(
        model, batches, params, config, ("loss", "refer")
    )
    assert torch.count_nonzero(refer_grads["classifier.weight"]) == 0
    assert torch.count_nonzero(loss_grads["classifier.weight"]) > 0
    assert all(g.dtype == torch.float32 for g in loss_grads.values())


def test_bf16_gradients_are_summed_in_float32_over_batches_and_micro_batches():
    batches = tiny_batches(2, batch_size=4)
    config = PrunerConfig(method="snip")
    model = tiny_vit().to(torch.bfloat16)
    params = find_prunable_parameters(model, config)
    (whole,) = accumulate_gradients(model, batches, params, config, ("loss",))
    micro = PrunerConfig(method="snip", micro_batch_size=2)
    (split,) = accumulate_gradients(model, batches, params, micro, ("loss",))
    for name in whole:
        assert whole[name].dtype == split[name].dtype == torch.float32
        torch.testing.assert_close(split[name], whole[name], rtol=0.05, atol=1e-3)
