"""Shrinking finds blocks by structure: other families with the ViT block layout work, others skip."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    DeiTForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    SiglipVisionConfig,
    SiglipVisionModel,
    SwinConfig,
    SwinForImageClassification,
)

from hf_afr import shrink
from hf_afr.architectures import get_architecture
from hf_afr.structure.slicing import get_submodule, transformer_layers

SMALL = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
)
FAMILIES = {
    "deit": lambda: DeiTForImageClassification(DeiTConfig(**SMALL, intermediate_size=64)),
    "dinov2": lambda: Dinov2ForImageClassification(Dinov2Config(**SMALL, mlp_ratio=2)),
    "clip": lambda: CLIPVisionModel(CLIPVisionConfig(**SMALL, intermediate_size=64)),
    "siglip": lambda: SiglipVisionModel(SiglipVisionConfig(**SMALL, intermediate_size=64)),
}

pytestmark = pytest.mark.usefixtures("single_thread")


def carve(model: nn.Module) -> None:
    """Random biases and hand-made empty rows/columns that trigger every rule in every block."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(10)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
        layout = get_architecture(model).layout
        for block in transformer_layers(model, layout).values():
            paths = (layout.query, layout.key, layout.value, layout.output)
            q, k, v, o = (get_submodule(block, path) for path in paths)
            k.weight[:3] = 0
            q.weight[3:6] = 0
            q.bias[3:5] = 0
            v.weight[v.out_features // 2 :] = 0  # the second head
            v.weight[0] = 0
            o.weight[:, 1] = 0
        for module in model.modules():  # every MLP, SigLIP's pooling head's too
            if isinstance(getattr(module, "fc1", None), nn.Linear):
                module.fc1.weight[:10] = 0
                module.fc2.weight[:, 5:15] = 0


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_with_the_vit_block_layout_shrink_exactly(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    carve(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = output(model, x)
    report = shrink(model)
    assert not report.skipped
    head = ["mlp"] if family == "siglip" else []  # SigLIP's pooling head has a plain MLP
    assert [b.kind for b in report.blocks] == ["attention", "mlp"] * 2 + head
    for block in report.blocks:
        assert block.macs_after < block.macs_before, block
    diff = (output(model, x) - expected).abs().max()
    assert diff <= 1e-5 * max(1.0, float(expected.abs().max())), diff


def test_a_layout_we_do_not_support_is_skipped_with_a_reason():
    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
    )
    model = SwinForImageClassification(config).eval()
    carve(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = output(model, x)
    report = shrink(model)
    # Swin's window attention (relative position bias) is not registered; its MLPs are plain.
    assert set(report.skipped) == {
        "swin.encoder.layers.0.blocks.0.attention",
        "swin.encoder.layers.1.blocks.0.attention",
    }
    assert all("not a registered attention layout" in r for r in report.skipped.values())
    assert [b.kind for b in report.blocks] == ["mlp", "mlp"]
    assert (output(model, x) - expected).abs().max() <= 1e-5 * max(1, float(expected.abs().max()))
