import pytest
import torch
from helpers import tiny_batches, tiny_vit, tiny_vit_config
from transformers import BertConfig, BertModel, ViTForImageClassification, ViTModel

from hf_afr import AFRPruner, PrunerConfig


@pytest.fixture
def vit_dir(tmp_path):
    path = tmp_path / "vit"
    tiny_vit(num_labels=3).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["afr", "snip", "refer", "magnitude", "random"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_prune_reaches_the_exact_sparsity_and_zeroes_weights(method, scope):
    model = tiny_vit()
    pruner = AFRPruner(model, PrunerConfig(method=method, sparsity=0.8, scope=scope, num_batches=2))
    masks = pruner.prune(tiny_batches(3), show_progress=False)
    params = dict(model.named_parameters())
    assert set(masks) == set(pruner.params) and set(masks) <= set(params)
    report = pruner.sparsity_report()
    if scope == "global":
        assert report.pruned == round(0.8 * report.numel)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool
        assert torch.all(params[name][~mask] == 0)
    assert not any("orig" in k or "parametriz" in k for k in model.state_dict())


def test_default_targets_are_the_encoder_linears_only():
    pruner = AFRPruner(tiny_vit())
    assert len(pruner.params) == 2 * 6
    assert all(
        name.startswith("vit.layers.") and name.endswith(".weight") for name in pruner.params
    )
    extended = AFRPruner(
        tiny_vit(), PrunerConfig(prune_patch_embeddings=True, prune_classifier=True)
    )
    assert "classifier.weight" in extended.params
    assert "vit.embeddings.patch_embeddings.projection.weight" in extended.params
    only_mlp = AFRPruner(
        tiny_vit(),
        PrunerConfig(target_modules=[r".*mlp\.fc\d"], exclude_modules=["layers.1.mlp.fc2"]),
    )
    assert sorted(only_mlp.params) == [
        "vit.layers.0.mlp.fc1.weight",
        "vit.layers.0.mlp.fc2.weight",
        "vit.layers.1.mlp.fc1.weight",
    ]
    with pytest.raises(ValueError, match="No prunable parameters"):
        AFRPruner(tiny_vit(), PrunerConfig(target_modules=["nothing_matches"]))


def test_pruning_is_deterministic():
    config = PrunerConfig(method="afr", sparsity=0.9, num_batches=2)
    a = AFRPruner(tiny_vit(), config).prune(tiny_batches(2), show_progress=False)
    b = AFRPruner(tiny_vit(), config).prune(tiny_batches(2), show_progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_only_num_batches_are_read():
    seen = []

    def stream():
        for batch in tiny_batches(5):
            seen.append(1)
            yield batch

    AFRPruner(tiny_vit(), PrunerConfig(num_batches=2)).compute_scores(stream(), show_progress=False)
    assert len(seen) == 2


def test_fully_pruned_tensors_are_reported(caplog):
    model = tiny_vit()
    with torch.no_grad():
        model.vit.layers[1].attention.q_proj.weight.mul_(1e-6)
    pruner = AFRPruner(model, PrunerConfig(method="magnitude", sparsity=0.9))
    pruner.prune()
    report = pruner.sparsity_report()
    assert "vit.layers.1.attention.q_proj.weight" in report.fully_pruned
    assert "FULLY PRUNED" in str(report) and "100% pruned" in report.to_markdown()
    assert report.to_dict()["fully_pruned"] == report.fully_pruned


@pytest.mark.parametrize("projection", ["q_proj", "k_proj"])
def test_what_the_fully_pruned_warning_says_of_queries_and_keys(projection):
    """An empty key projection makes attention uniform; an empty query projection makes every
    token attend alike, uniformly when its bias is zero (the warning and the model card say so)."""
    model = tiny_vit(attn_implementation="eager")
    with torch.no_grad():
        layer = getattr(model.vit.layers[0].attention, projection)
        layer.weight.zero_()
        layer.bias.normal_(generator=torch.Generator().manual_seed(1))  # ViT's init zeroes it
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(pixel_values=x, output_attentions=True).attentions[0]  # [b, h, q, k]
    if projection == "k_proj":
        assert torch.allclose(probs, torch.full_like(probs, 1 / probs.shape[-1]), atol=1e-6)
    else:
        assert torch.allclose(probs, probs[:, :, :1].expand_as(probs), atol=1e-6)
        assert not torch.allclose(probs, torch.full_like(probs, 1 / probs.shape[-1]), atol=1e-3)


@pytest.mark.parametrize(
    "method, batches, message",
    [
        ("snip", [{"pixel_values": torch.randn(2, 3, 32, 32)}], "needs the downstream labels"),
        ("afr", [{"pixel_values": torch.randn(2, 3, 32, 32)}], "needs the downstream labels"),
        ("afr", [], "No scoring batches"),
        ("refer", None, "needs scoring batches"),
        ("refer", [torch.randn(2, 3, 32, 32)], "must be a dict with 'pixel_values'"),
        (
            "snip",
            [{"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 7])}],
            r"in \[0, 3\)",
        ),
        ("refer", [{"pixel_values": torch.randn(3, 32, 32)}], "shape"),
    ],
)
def test_bad_batches_raise_clear_errors(method, batches, message):
    pruner = AFRPruner(tiny_vit(), PrunerConfig(method=method))
    with pytest.raises(ValueError, match=message):
        pruner.prune(batches, show_progress=False)


def test_nan_weights_give_an_error_naming_the_parameter():
    model = tiny_vit()
    with torch.no_grad():
        model.vit.layers[0].mlp.fc2.weight[0, 0] = float("nan")
    pruner = AFRPruner(model, PrunerConfig(method="magnitude"))
    with pytest.raises(ValueError, match="vit.layers.0.mlp.fc2.weight"):
        pruner.prune()


def test_not_a_vit_classifier_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ViTForImageClassification"):
        AFRPruner(torch.nn.Linear(2, 2))
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model"):
        AFRPruner.from_pretrained(tmp_path / "bert")


def test_from_pretrained_replaces_a_mismatched_head(vit_dir):
    id2label = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}
    pruner = AFRPruner.from_pretrained(vit_dir, id2label=id2label)
    assert pruner.model.classifier.out_features == 5
    assert pruner.model.config.label2id == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    original = ViTForImageClassification.from_pretrained(vit_dir)
    torch.testing.assert_close(
        pruner.model.vit.layers[0].mlp.fc1.weight, original.vit.layers[0].mlp.fc1.weight
    )


def test_from_pretrained_accepts_a_bare_vit_model(tmp_path):
    torch.manual_seed(0)
    backbone = ViTModel(tiny_vit_config(), add_pooling_layer=False)
    backbone.save_pretrained(tmp_path / "dino-like")
    pruner = AFRPruner.from_pretrained(tmp_path / "dino-like", num_labels=4)
    assert pruner.model.classifier.out_features == 4
    torch.testing.assert_close(
        pruner.model.vit.layers[1].attention.q_proj.weight,
        backbone.layers[1].attention.q_proj.weight,
    )


def test_pruned_model_saves_and_loads_with_plain_transformers(tmp_path, vit_dir):
    pruner = AFRPruner.from_pretrained(
        vit_dir, PrunerConfig(method="snip", sparsity=0.7, num_batches=1)
    )
    batches = tiny_batches(1)
    pruner.prune(batches, show_progress=False)
    pruner.save_pretrained(tmp_path / "pruned")
    plain = ViTForImageClassification.from_pretrained(tmp_path / "pruned").eval()
    assert set(plain.state_dict()) == set(pruner.model.state_dict())
    x = batches[0]["pixel_values"]
    torch.testing.assert_close(
        plain(pixel_values=x).logits, pruner.model.eval()(pixel_values=x).logits
    )
    restored = AFRPruner.from_pretrained(tmp_path / "pruned")
    assert restored.config == pruner.config
    assert all(torch.equal(restored.masks[k], pruner.masks[k]) for k in pruner.masks)
