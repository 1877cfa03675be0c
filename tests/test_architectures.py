"""Every family of the architecture registry: loading, targets, features, scores, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from families import (
    BACKBONES,
    FAMILIES,
    tiny_backbone,
    tiny_batches,
    tiny_classifier,
)
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, ConvNextConfig, ConvNextModel

from hf_afr import AFRPruner, PrunerConfig, find_prunable_parameters, get_criterion
from hf_afr.architectures import (
    ARCHITECTURES,
    encoder_blocks,
    get_architecture,
    module_names,
    supported_model_types,
)
from hf_afr.criteria.gradients import accumulate_gradients, layer_features

# What each family's classification head reads, from its transformers code (see
# docs/architectures.md), and how many leading tokens are not patches in the tiny configs.
EXPECTED = {
    "vit": ("cls", 1),
    "vit_msn": ("cls", 1),
    "deit": ("cls", 2),  # CLS + distillation token
    "dinov2": ("cls_patch_mean", 1),
    "dinov2_with_registers": ("cls_patch_mean", 4),  # CLS + 3 registers
    "beit": ("patch_mean", 1),
    "data2vec-vision": ("patch_mean", 1),
    "ijepa": ("mean", 0),
    "clip": ("patch_mean", 1),
    "siglip": ("mean", 0),
    "swin": ("mean", 0),
}


def test_the_registry_is_the_documented_set_of_families():
    assert set(FAMILIES) == set(EXPECTED)
    assert set(supported_model_types()) == set(EXPECTED) | {
        "clip_vision_model",
        "siglip_vision_model",
    }


@pytest.mark.parametrize("model_type", FAMILIES)
def test_entry_names_the_model_head_patch_embedding_and_feature(model_type):
    model = tiny_classifier(model_type)
    arch = get_architecture(model)
    assert arch.model_type == model_type and isinstance(model, arch.model_cls)
    assert len(module_names(model, arch.patch_embedding, nn.Conv2d)) == 1
    assert isinstance(model.get_submodule(arch.head), nn.Linear)
    feature, prefix = EXPECTED[model_type]
    assert AFRPruner(model).config.feature_token == feature
    assert arch.num_prefix_tokens(model.config) == prefix
    # Independent count: tokens of the embedding output minus the patches of the image.
    with torch.no_grad():
        hidden = model(pixel_values=tiny_batches(1)[0]["pixel_values"], output_hidden_states=True)
    patches = hidden.hidden_states[0].shape[1] if model_type == "swin" else (32 // 8) ** 2
    assert hidden.hidden_states[0].shape[1] - patches == prefix


def _perturb_last_block_output(model, token: int):
    """A forward hook adding noise to one token of the last encoder block's output."""
    last = list(encoder_blocks(model).values())[-1]

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, token] += torch.randn_like(h[:, token])
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return last.register_forward_hook(hook, prepend=True)  # before transformers records it


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_auto_feature_reads_exactly_the_tokens_the_head_reads(model_type):
    """Perturb one token of the last block's output: the logits move iff the feature does."""
    model = tiny_classifier(model_type)
    pruner = AFRPruner(model)
    x = tiny_batches(1)[0]["pixel_values"]

    def run():
        with torch.no_grad():
            out = model(pixel_values=x, output_hidden_states=True)
        return out.logits, layer_features(out.hidden_states, pruner.config, model.config)[-1]

    logits, feature = run()
    num_tokens = model(pixel_values=x, output_hidden_states=True).hidden_states[-1].shape[1]
    _, prefix = EXPECTED[model_type]
    for token in sorted({0, *range(prefix), prefix, num_tokens - 1}):
        torch.manual_seed(token)
        handle = _perturb_last_block_output(model, token)
        try:
            new_logits, new_feature = run()
        finally:
            handle.remove()
        head_reads = not torch.allclose(new_logits, logits, atol=1e-6)
        feature_reads = not torch.allclose(new_feature, feature, atol=1e-6)
        assert head_reads == feature_reads, (model_type, token, head_reads)


def test_beit_without_mean_pooling_reads_the_cls_token():
    model = tiny_classifier("beit", use_mean_pooling=False)
    assert AFRPruner(model).config.feature_token == "cls"


@pytest.mark.parametrize("model_type", ["swin", "siglip", "ijepa"])
@pytest.mark.parametrize("token", ["cls", "cls_patch_mean"])
def test_a_cls_feature_without_a_cls_token_is_refused(model_type, token):
    with pytest.raises(ValueError, match="reads a CLS token, but .* has none"):
        AFRPruner(tiny_classifier(model_type), PrunerConfig(feature_token=token))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_default_targets_are_the_linears_of_every_encoder_block(model_type):
    model = tiny_classifier(model_type)
    params = find_prunable_parameters(model, PrunerConfig())
    config = model.config
    if model_type == "swin":  # 6 per block, plus one patch-merging reduction between stages
        expected = 6 * sum(config.depths) + len(config.depths) - 1
        assert sum(".downsample.reduction." in n for n in params) == len(config.depths) - 1
    else:
        expected = 6 * getattr(config, "vision_config", config).num_hidden_layers
    assert len(params) == expected
    assert all(
        isinstance(model.get_submodule(n.removesuffix(".weight")), nn.Linear) for n in params
    )
    assert not any(n.startswith("classifier") or ".head." in n for n in params)  # SigLIP's MAP head
    arch = get_architecture(model)
    extended = find_prunable_parameters(
        model, PrunerConfig(prune_patch_embeddings=True, prune_classifier=True)
    )
    added = set(extended) - set(params)
    assert added == {
        f"{arch.head}.weight",
        *(f"{n}.weight" for n in module_names(model, arch.patch_embedding, nn.Conv2d)),
    }


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("method", ["afr", "snip", "refer", "magnitude", "random"])
def test_every_criterion_prunes_every_family(model_type, method):
    model = tiny_classifier(model_type)
    pruner = AFRPruner(model, PrunerConfig(method=method, sparsity=0.8, num_batches=2))
    masks = pruner.prune(tiny_batches(2), show_progress=False)
    report = pruner.sparsity_report()
    assert report.pruned == round(0.8 * report.numel)
    params = dict(model.named_parameters())
    assert all(torch.all(params[name][~mask] == 0) for name, mask in masks.items())


def test_auto_scores_a_vit_exactly_as_the_cls_token_did():
    batches = tiny_batches(2)
    auto = AFRPruner(tiny_classifier("vit"), PrunerConfig(feature_token="auto"))
    cls = AFRPruner(tiny_classifier("vit"), PrunerConfig(feature_token="cls"))
    assert auto.config == cls.config
    a, b = (p.compute_scores(batches, show_progress=False) for p in (auto, cls))
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_checkpointing_and_micro_batches_leave_every_familys_scores_unchanged(model_type):
    batches = tiny_batches(1, batch_size=5)
    plain = AFRPruner(tiny_classifier(model_type), PrunerConfig(num_batches=1))
    expected = plain.compute_scores(batches, show_progress=False)
    for option in ({"gradient_checkpointing": True}, {"micro_batch_size": 2}):
        pruner = AFRPruner(tiny_classifier(model_type), PrunerConfig(num_batches=1, **option))
        scores = pruner.compute_scores(batches, show_progress=False)
        for name in expected:
            torch.testing.assert_close(scores[name], expected[name], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- independent scores


def head_feature(model_type: str, h: torch.Tensor) -> torch.Tensor:
    """Written out per family from each head's transformers code, independently of hf_afr."""
    if model_type in ("vit", "vit_msn", "deit"):
        return h[:, 0]
    if model_type in ("dinov2", "dinov2_with_registers"):
        first_patch = 1 + (3 if model_type == "dinov2_with_registers" else 0)
        return torch.cat([h[:, 0], h[:, first_patch:].mean(dim=1)], dim=1)
    if model_type in ("beit", "data2vec-vision", "clip"):
        return h[:, 1:].mean(dim=1)
    return h.mean(dim=1)  # ijepa, siglip, swin: no CLS token


def hooked_objectives(model, model_type, batch, center=False):
    """(cross-entropy, ReFer objective) with features read by forward hooks on the blocks and
    the mean singular value from the eigenvalues of F F^T (no hidden_states, no svdvals);
    `center`: of H F F^T H, H = I - 11^T / N the centring matrix."""
    outputs = []
    handles = [
        block.register_forward_hook(
            lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
        for block in encoder_blocks(model).values()
    ]
    try:
        logits = model(pixel_values=batch["pixel_values"]).logits
    finally:
        for handle in handles:
            handle.remove()
    refer = 0.0
    for h in outputs:
        f = head_feature(model_type, h)
        gram = f @ f.T
        if center:
            n = f.shape[0]
            centring = torch.eye(n, dtype=f.dtype) - torch.full((n, n), 1.0 / n, dtype=f.dtype)
            gram = centring @ gram @ centring
        eigenvalues = torch.linalg.eigvalsh(gram)
        refer = refer + eigenvalues.clamp(min=0).sqrt().sum() / f.shape[0]
    return F.cross_entropy(logits, batch["labels"]), refer


@pytest.mark.parametrize("model_type", FAMILIES)
def test_snip_and_refer_gradients_match_hooks_and_finite_differences(model_type):
    """Covers CLS (ViT, DeiT), patch-mean (CLIP, BEiT), token-mean (SigLIP, I-JEPA), CLS +
    patch-mean with registers (DINOv2) and hierarchical per-stage (Swin) features."""
    model = tiny_classifier(model_type).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batches(1)[0].items()}
    config = AFRPruner(model).config
    params = find_prunable_parameters(model, config)
    grads = accumulate_gradients(model, [batch], params, config, ("loss", "refer"))

    objectives = hooked_objectives(model, model_type, batch)
    references = [
        torch.autograd.grad(objective, list(params.values()), retain_graph=True)
        for objective in objectives
    ]
    for ours, reference in zip(grads, references):
        for (name, g), ref in zip(ours.items(), reference):
            torch.testing.assert_close(g, ref.float(), rtol=1e-4, atol=1e-7, msg=name)
    # The scores: |g * w| with the reference gradients.
    for method, reference in zip(("snip", "refer"), references):
        scores = get_criterion(method).score(model, [batch], params, config)
        for (name, p), ref in zip(params.items(), reference):
            expected = (ref * p.detach()).abs().float()
            atol = 1e-6 * expected.abs().max().item()  # the loss is taken on float32 logits
            torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=atol)

    # Central finite differences of the hooked objectives along one random direction.
    generator = torch.Generator().manual_seed(0)
    direction = {
        n: torch.randn(p.shape, generator=generator, dtype=p.dtype) for n, p in params.items()
    }
    eps = 1e-5

    def shifted(sign):
        with torch.no_grad():
            for name, p in params.items():
                p.add_(direction[name], alpha=sign * eps)
            values = [v.item() for v in hooked_objectives(model, model_type, batch)]
            for name, p in params.items():
                p.sub_(direction[name], alpha=sign * eps)
        return np.array(values)

    finite = (shifted(1) - shifted(-1)) / (2 * eps)
    analytic = [sum((g[n].double() * direction[n]).sum().item() for n in params) for g in grads]
    np.testing.assert_allclose(analytic, finite, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["vit", "swin"])
def test_centred_refer_gradients_match_the_centring_matrix_and_micro_batches(model_type):
    model = tiny_classifier(model_type).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batches(1)[0].items()}
    config = AFRPruner(model, PrunerConfig(structure="mlp")).config
    assert config.centers_features  # on by default with a structure
    params = find_prunable_parameters(model, config)
    (ours,) = accumulate_gradients(model, [batch], params, config, ("refer",))
    objective = hooked_objectives(model, model_type, batch, center=True)[1]
    reference = torch.autograd.grad(objective, list(params.values()))
    for (name, g), ref in zip(ours.items(), reference):
        torch.testing.assert_close(g, ref.float(), rtol=1e-4, atol=1e-7, msg=name)
    uncentred = hooked_objectives(model, model_type, batch)[1]
    assert abs(uncentred.item() - objective.item()) > 1e-3 * abs(objective.item())
    micro = dataclasses.replace(config, micro_batch_size=2)  # centred on the whole batch
    (split,) = accumulate_gradients(model, [batch], params, micro, ("refer",))
    for name in ours:
        torch.testing.assert_close(split[name], ours[name], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_a_bare_backbone_gets_a_new_head(kind, tmp_path):
    backbone = tiny_backbone(kind)
    backbone.save_pretrained(tmp_path / kind)
    pruner = AFRPruner.from_pretrained(tmp_path / kind, num_labels=4)
    family = kind.removesuffix("_vision_model")
    model = pruner.model
    assert type(model) is ARCHITECTURES[family].model_cls and model.config.model_type == family
    assert model.get_submodule("classifier").out_features == 4 and model.config.num_labels == 4
    # Every backbone weight arrived: compare the prunable weights and the patch embedding.
    source = {n: p for n, p in backbone.named_parameters()}
    arch = get_architecture(model)
    (patch,) = module_names(model, arch.patch_embedding, nn.Conv2d)
    for name in [*pruner.params, f"{patch}.weight"]:
        in_backbone = next(n for n in (name, name.split(".", 1)[1]) if n in source)
        assert torch.equal(source[in_backbone], model.get_parameter(name)), name


@pytest.mark.parametrize("kind", ["clip_vision_model", "siglip_vision_model"])
def test_a_vision_only_checkpoint_in_the_transformers_4_layout_loads(kind, tmp_path):
    backbone = tiny_backbone(kind)
    backbone.save_pretrained(tmp_path)  # keys without the 4.x "vision_model." prefix
    weights = load_file(tmp_path / "model.safetensors")
    prefixed = {f"vision_model.{k}": v for k, v in weights.items()}
    save_file(prefixed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = AFRPruner.from_pretrained(tmp_path, num_labels=2).model
    for name, param in backbone.named_parameters():
        assert torch.equal(model.get_parameter(f"vision_model.{name}"), param), name


def test_a_checkpoint_missing_encoder_weights_is_refused(tmp_path):
    tiny_classifier("dinov2").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if ".layer.1." not in k}, tmp_path / "model.safetensors"
    )
    with pytest.raises(ValueError, match="does not hold the DINOv2 encoder weights"):
        AFRPruner.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "model",
    [
        BertModel(
            BertConfig(
                hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
            )
        ),
        ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
    ],
    ids=["bert", "convnext"],
)
def test_an_unsupported_family_gets_one_line_listing_the_supported(model, tmp_path):
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as info:
        AFRPruner.from_pretrained(tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"{model.config.model_type!r} model" in message
    assert all(t in message for t in supported_model_types())
    with pytest.raises(ValueError, match="supported vision transformer families"):
        AFRPruner(model)


def test_a_backbone_object_is_refused_with_the_class_to_use():
    model = tiny_classifier("deit")
    with pytest.raises(
        ValueError, match="as transformers' DeiTForImageClassification, got DeiTModel"
    ):
        AFRPruner(model.deit)
