"""Scores against independent computations: autograd .grad, finite differences, numpy z-scores."""

import numpy as np
import pytest
import torch
from helpers import tiny_batches, tiny_vit

from hf_afr import PrunerConfig, find_prunable_parameters, get_criterion
from hf_afr.criteria.afr import standardize, sum_of_z_scores


def scores_of(method, model, batches, **config_kwargs):
    config = PrunerConfig(method=method, **config_kwargs)
    params = find_prunable_parameters(model, config)
    return get_criterion(method).score(model, batches, params, config), params


def test_snip_equals_accumulated_dot_grad_times_weight():
    model, batches = tiny_vit(), tiny_batches(3)
    scores, params = scores_of("snip", model, batches)
    # Independent: .backward() accumulating into .grad, loss from the model itself.
    reference = tiny_vit()
    for batch in batches:
        reference(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, s in scores.items():
        expected = (ref_params[name].grad * ref_params[name].detach()).abs()
        torch.testing.assert_close(s, expected, rtol=1e-5, atol=1e-8)


def mean_singular_value_objective(model, batch, token):
    """sum_l (1/N) sum_i sigma_i, singular values from the eigenvalues of F F^T (no svdvals)."""
    with torch.no_grad():
        hidden = model(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states
    total = 0.0
    for h in hidden[1:]:
        f = h[:, 0, :] if token == "cls" else h.mean(dim=1)
        eig = np.linalg.eigvalsh(f.numpy() @ f.numpy().T)
        total += np.sqrt(np.clip(eig, 0, None)).sum() / f.shape[0]
    return total


@pytest.mark.parametrize("token", ["cls", "mean"])
def test_refer_gradient_matches_central_finite_differences(token):
    model = tiny_vit().double()
    batch = {"pixel_values": tiny_batches(1, batch_size=5)[0]["pixel_values"].double()}
    scores, params = scores_of("refer", model, [batch], feature_token=token)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in ["vit.layers.0.attention.v_proj.weight", "vit.layers.1.mlp.fc1.weight"]:
        p = params[name]
        for _ in range(3):
            idx = tuple(int(rng.integers(0, d)) for d in p.shape)
            w = p.data[idx].item()
            with torch.no_grad():
                p[idx] = w + eps
                plus = mean_singular_value_objective(model, batch, token)
                p[idx] = w - eps
                minus = mean_singular_value_objective(model, batch, token)
                p[idx] = w
            fd_score = abs((plus - minus) / (2 * eps) * w)
            assert scores[name][idx].item() == pytest.approx(fd_score, rel=1e-4, abs=1e-9)


def test_refer_handles_rank_deficient_features_without_nans():
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32).repeat(4, 1, 1, 1)  # identical rows: rank 1, N < D
    scores, _ = scores_of("refer", model, [{"pixel_values": x}])
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert sum(s.sum() for s in scores.values()) > 0


def zscore(arrays):
    flat = np.concatenate([a.ravel() for a in arrays.values()]).astype(np.float64)
    return {k: (a - flat.mean()) / flat.std() for k, a in arrays.items()}


def heavy_tailed_scores(seed, offset=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32,), (16, 3, 4, 4)]
    return {
        f"t{i}": offset + scale * torch.randn(s, generator=g).pow(4) for i, s in enumerate(shapes)
    }


@pytest.mark.parametrize(
    "offset, scale",
    [(0.0, 1.0), (0.0, 1e-12), (0.0, 1e18), (1e3, 1.0), (1.0, 1e-4)],
    ids=["plain", "tiny", "huge", "large-mean", "tiny-variance"],
)
def test_z_scores_match_numpy_in_float64(offset, scale):
    # Squares of `huge` overflow float32, the last two have a variance far below the mean
    # square: the exact two-pass path.
    scores = heavy_tailed_scores(0, offset, scale)
    expected = zscore({k: v.double().numpy() for k, v in scores.items()})
    z = standardize({k: v.clone() for k, v in scores.items()})
    for name in scores:
        np.testing.assert_allclose(z[name].numpy(), expected[name], rtol=1e-4, atol=1e-4)


def test_sum_of_z_scores_matches_numpy():
    a, b = heavy_tailed_scores(1), heavy_tailed_scores(2, offset=3.0, scale=50.0)
    za = zscore({k: v.double().numpy() for k, v in a.items()})
    zb = zscore({k: v.double().numpy() for k, v in b.items()})
    total = sum_of_z_scores({k: v.clone() for k, v in a.items()}, b)
    for name in a:
        np.testing.assert_allclose(total[name].numpy(), za[name] + zb[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf")])
def test_z_scores_of_constant_or_non_finite_scores_are_a_clear_error(value):
    scores = {"a": torch.full((4, 4), value), "b": torch.full((3,), value)}
    with pytest.raises(ValueError, match="standard deviation is zero or not finite"):
        standardize(scores)


def test_afr_is_the_sum_of_z_scores_of_separately_computed_refer_and_snip():
    model, batches = tiny_vit(), tiny_batches(2)
    afr, _ = scores_of("afr", model, batches)
    snip, _ = scores_of("snip", model, batches)
    refer, _ = scores_of("refer", model, batches)
    z_snip = zscore({k: v.numpy() for k, v in snip.items()})
    z_refer = zscore({k: v.numpy() for k, v in refer.items()})
    for name, s in afr.items():
        np.testing.assert_allclose(s.numpy(), z_snip[name] + z_refer[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["snip", "refer", "afr"])
def test_micro_batches_give_the_scores_of_the_whole_batch(method):
    model, batches = tiny_vit(), tiny_batches(2, batch_size=7)
    whole, _ = scores_of(method, model, batches)
    split, _ = scores_of(method, model, batches, micro_batch_size=3)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "method", ["snip", "refer", "afr", "grasp", "fisher", "synflow", "magnitude", "random"]
)
def test_scoring_changes_no_weight_and_restores_the_model_state(method):
    model, batches = tiny_vit(), tiny_batches(1)
    model.train()
    model.classifier.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores_of(method, model, batches)
    assert model.training and all(m.training for m in model.modules())
    assert model.classifier.weight.requires_grad is False
    assert model.vit.layers[0].mlp.fc1.weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert not model.config.output_hidden_states
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_magnitude_and_random_baselines():
    model = tiny_vit()
    mag, params = scores_of("magnitude", model, None)
    for name, p in params.items():
        assert torch.equal(mag[name], p.detach().abs())
    r1, _ = scores_of("random", model, None, seed=3)
    r2, _ = scores_of("random", model, None, seed=3)
    r3, _ = scores_of("random", model, None, seed=4)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    assert not all(torch.equal(r1[k], r3[k]) for k in r1)


def test_feature_choices_change_the_refer_objective():
    model, batches = tiny_vit(), tiny_batches(1)
    cls, _ = scores_of("refer", model, batches)
    mean, _ = scores_of("refer", model, batches, feature_token="mean")
    name = "vit.layers.0.mlp.fc1.weight"
    assert not torch.allclose(cls[name], mean[name])
    # The embedding output depends on the patch embedding only, not on encoder weights (and
    # its CLS row is the same for every image, so only token-mean features see the patches).
    kwargs = dict(prune_patch_embeddings=True, feature_token="mean")
    enc, _ = scores_of("refer", model, batches, **kwargs)
    all_layers, _ = scores_of("refer", model, batches, feature_layers="all", **kwargs)
    patch = "vit.embeddings.patch_embeddings.projection.weight"
    torch.testing.assert_close(enc[name], all_layers[name])
    assert not torch.allclose(enc[patch], all_layers[patch])


def test_bf16_model_gives_float32_scores():
    model, batches = tiny_vit().to(torch.bfloat16), tiny_batches(1)
    scores, _ = scores_of("afr", model, batches)
    assert all(s.dtype == torch.float32 and torch.isfinite(s).all() for s in scores.values())
