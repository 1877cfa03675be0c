"""`hf_afr.structure.slicing`: a sliced model computes what the gated dense model computes."""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, IMAGE_SIZE, tiny_classifier
from torch import nn

from hf_afr.architectures import get_architecture
from hf_afr.structure import slicing

pytestmark = pytest.mark.usefixtures("single_thread")

# 4 heads of 8 where the width allows it; BEiT and Data2Vec with per-layer position bias tables.
OVERRIDES = {
    "swin": {"num_heads": [2, 4]},
    "beit": {"num_attention_heads": 4, "use_relative_position_bias": True},
    "data2vec-vision": {"num_attention_heads": 4, "use_relative_position_bias": True},
}


def family_model(family: str) -> nn.Module:
    model = tiny_classifier(family, **OVERRIDES.get(family, {"num_attention_heads": 4}))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # nonzero biases, tables and larger weights: every part matters
        for name, param in model.named_parameters():
            if name.endswith("bias") or "relative_position_bias_table" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif param.dim() == 2:
                param.mul_(5)
    return model


def images(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def gated_logits(model, layout, removed_heads, removed_units) -> torch.Tensor:
    """Logits with the removed heads' context vectors and units' activations multiplied by 0."""
    handles = []
    blocks = slicing.transformer_layers(model, layout)
    for block, heads, units in zip(blocks.values(), removed_heads, removed_units):
        size = slicing.head_dim(block, layout)
        head_gate = torch.ones(slicing.num_heads(block, layout), size)
        head_gate[heads] = 0
        unit_gate = torch.ones(slicing.num_units(block, layout))
        unit_gate[units] = 0
        for path, gate in ((layout.output, head_gate.flatten()), (layout.fc2, unit_gate)):
            module = slicing.get_submodule(block, path)
            handles.append(module.register_forward_pre_hook(lambda m, a, g=gate: (a[0] * g,)))
    with torch.no_grad():
        logits = model(pixel_values=images()).logits
    for handle in handles:
        handle.remove()
    return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_slicing_heads_and_units_equals_gating_them_to_zero(family):
    model = family_model(family)
    layout = get_architecture(model).layout
    blocks = slicing.transformer_layers(model, layout)
    assert len(blocks) == (4 if family == "swin" else 2)
    removed_heads = [[i % slicing.num_heads(b, layout)] for i, b in enumerate(blocks.values())]
    removed_units = [[0, 3, 5 + i] for i in range(len(blocks))]
    keys = {k: v.shape for k, v in model.state_dict().items()}
    expected = gated_logits(model, layout, removed_heads, removed_units)
    with torch.no_grad():
        dense = model(pixel_values=images()).logits
    assert (dense - expected).abs().max() > 1e-3  # the removed groups did matter
    for block, heads, units in zip(blocks.values(), removed_heads, removed_units):
        slicing.prune_heads(block, layout, heads)
        slicing.prune_units(block, layout, units)
    with torch.no_grad():
        sliced = model(pixel_values=images()).logits
    torch.testing.assert_close(sliced, expected, atol=1e-5, rtol=1e-5)
    heads, units = slicing.layer_widths(model, layout)
    full_heads = [4] * 2 if family != "swin" else [2, 2, 4, 4]
    assert heads == [n - 1 for n in full_heads]
    assert units == [slicing.get_submodule(b, layout.fc2).in_features for b in blocks.values()]
    assert model.state_dict().keys() == keys.keys()
    smaller = [k for k, v in model.state_dict().items() if v.shape != keys[k]]
    assert smaller and all("classifier" not in k and "norm" not in k for k in smaller)
    tables = [k for k in smaller if "relative_position_bias_table" in k]
    assert bool(tables) == (family in ("swin", "beit", "data2vec-vision"))


@pytest.mark.parametrize("family", ["vit", "swin", "data2vec-vision"])
def test_a_sliced_model_trains_and_its_widths_rebuild_an_empty_copy(family):
    model = family_model(family)
    layout = get_architecture(model).layout
    for block in slicing.transformer_layers(model, layout).values():
        slicing.keep_heads(block, layout, [1])
        slicing.keep_units(block, layout, [2, 4, 6])
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    loss = nn.functional.cross_entropy(model(pixel_values=images()).logits, torch.tensor([0, 1]))
    loss.backward()
    sliced = slicing.get_submodule(
        next(iter(slicing.transformer_layers(model, layout).values())), layout.query
    )
    assert sliced.weight.grad is not None and sliced.weight.grad.shape == sliced.weight.shape
    assert isinstance(sliced, nn.Linear) and type(sliced) is nn.Linear
    fresh = family_model(family)
    slicing.set_widths(fresh, layout, *slicing.layer_widths(model, layout))
    fresh.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            fresh(pixel_values=images()).logits, model(pixel_values=images()).logits
        )


def test_bad_head_and_unit_lists_are_one_line_value_errors():
    model = family_model("vit")
    layout = get_architecture(model).layout
    block = next(iter(slicing.transformer_layers(model, layout).values()))
    with pytest.raises(ValueError, match="at least one attention head"):
        slicing.prune_heads(block, layout, range(4))
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        slicing.keep_units(block, layout, [64])
    with pytest.raises(ValueError, match="2 transformer blocks"):
        slicing.set_widths(model, layout, [1], [1])
