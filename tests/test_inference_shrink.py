"""`hf_afr.shrink`: each exactness rule against the unshrunk model, on hand-made masks."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from helpers import tiny_vit
from torch import nn
from transformers.models.vit.modeling_vit import ViTAttention

from hf_afr import shrink
from hf_afr.inference import InferenceOnlyError

ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("single_thread")


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixel_values=x).logits


def model_with_biases(seed: int = 0, **overrides) -> nn.Module:
    """A tiny ViT (2 layers, hidden 32, 2 heads of 16, MLP 64) with every bias nonzero.

    transformers initialises Linear biases to zero, which would make every folding rule trivial;
    larger weights than the default init make the logits depend clearly on the input.
    """
    model = tiny_vit(seed=seed, initializer_range=0.3, **overrides)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)
    return model


def empty_rows(linear: nn.Linear, rows, zero_bias: bool = False) -> None:
    with torch.no_grad():
        linear.weight[list(rows)] = 0
        if zero_bias and linear.bias is not None:
            linear.bias[list(rows)] = 0


def empty_cols(linear: nn.Linear, cols) -> None:
    with torch.no_grad():
        linear.weight[:, list(cols)] = 0


def assert_exact(model: nn.Module, report=None) -> nn.Module:
    """Shrink a copy of `model` and check its logits against the unshrunk model's."""
    shrunk = copy.deepcopy(model)
    report = shrink(shrunk)
    x = images()
    expected = logits(model, x)
    diff = (logits(shrunk, x) - expected).abs().max()
    assert diff <= ATOL * max(1.0, float(expected.abs().max())), diff
    return shrunk, report


def test_mlp_units_with_an_empty_fc1_row_or_fc2_column_are_removed_exactly():
    model = model_with_biases()
    mlp = model.vit.layers[0].mlp
    empty_rows(mlp.fc1, range(0, 10))  # bias stays: act(b1) * W2[:, j] is folded into fc2.bias
    empty_cols(mlp.fc2, range(5, 15))
    shrunk, report = assert_exact(model)
    new = shrunk.vit.layers[0].mlp
    assert new.fc1.out_features == new.fc2.in_features == 64 - 15
    assert shrunk.vit.layers[1].mlp.fc1.out_features == 64  # untouched
    assert "5 units with an empty fc1 row" in report.blocks[1].removed
    assert "10 with an empty fc2 column" in report.blocks[1].removed
    assert "hidden units 64 -> 49" in repr(new)
    # The fold is needed: dropping those units without it changes the logits.
    naive = copy.deepcopy(model)
    with torch.no_grad():
        naive.vit.layers[0].mlp.fc1.bias[:5] = -1e4  # GELU(-1e4) = 0: the units contribute nothing
    assert (logits(naive, images()) - logits(model, images())).abs().max() > 1e-3


def test_value_dimensions_with_an_empty_v_row_or_o_column_are_removed_exactly():
    model = model_with_biases()
    attention = model.vit.layers[1].attention
    empty_rows(attention.v_proj, [1, 2, 3, 20])  # b_v[d] * W_o[:, d] folded into o_proj.bias
    empty_cols(attention.o_proj, [4, 5, 20, 21])
    shrunk, report = assert_exact(model)
    new = shrunk.vit.layers[1].attention
    # Head 0 keeps 16 - 5 value dims, head 1 keeps 16 - 2: both padded to 14.
    assert new.v_head_dim == 14 and new.v_proj.out_features == new.o_proj.in_features == 28
    assert new.qk_head_dim == 16 and new.num_attention_heads == 2
    assert "3 v dims folded" in report.blocks[2].removed


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_query_key_dimensions_are_removed_only_where_exact(implementation):
    model = model_with_biases()
    model.set_attn_implementation(implementation)
    attention = model.vit.layers[0].attention
    empty_rows(attention.k_proj, [0, 1, 2])  # key bias nonzero: a per-query constant, removed
    empty_rows(attention.q_proj, [3, 4], zero_bias=True)  # q = 0 there: removed
    empty_rows(attention.q_proj, [5, 6])  # q = b_q there, varies along keys: kept
    empty_rows(attention.k_proj, range(16, 22))  # head 1
    empty_rows(attention.q_proj, range(16, 22))  # both sides empty: removed
    shrunk, _ = assert_exact(model)
    new = shrunk.vit.layers[0].attention
    assert (
        new.qk_head_dim == 11
    )  # head 0 keeps 11 of 16 (5 and 6 stay), head 1 keeps 10 (+1 zero pad)
    assert new.q_proj.out_features == new.k_proj.out_features == 22
    assert new.scaling == 16**-0.5  # the unshrunk head size, not 11
    assert "q/k dims per head 16 -> 11" in repr(new) and "scaling 0.25 kept" in repr(new)
    if implementation == "eager":  # the attention weights are captured and unchanged
        with torch.inference_mode():
            got = shrunk(pixel_values=images(), output_attentions=True).attentions
            want = model(pixel_values=images(), output_attentions=True).attentions
        assert len(got) == 2 and max((a - b).abs().max() for a, b in zip(got, want)) < 1e-5
    # The rule for the one-sided query case is needed: removing those dims changes the logits.
    wrong = copy.deepcopy(model)
    with torch.no_grad():
        wrong.vit.layers[0].attention.q_proj.bias[5:7] = 0
    assert (logits(wrong, images()) - logits(model, images())).abs().max() > 1e-4


def test_a_head_without_values_is_removed_and_the_scaling_kept():
    model = model_with_biases()
    attention = model.vit.layers[0].attention
    empty_rows(attention.v_proj, range(16, 32))  # head 1 outputs b_v: a constant, folded
    empty_rows(attention.k_proj, [0, 1, 2, 3])
    shrunk, report = assert_exact(model)
    new = shrunk.vit.layers[0].attention
    assert new.num_attention_heads == 1 and new.qk_head_dim == 12 and new.v_head_dim == 16
    assert report.blocks[0].before == "2x(16, 16)" and report.blocks[0].after == "1x(12, 16)"
    assert new.scaling == 16**-0.5


def test_blocks_emptied_entirely_keep_valid_shapes_and_their_constants():
    model = model_with_biases()
    layer = model.vit.layers[1]
    empty_rows(layer.attention.v_proj, range(32))
    empty_rows(layer.mlp.fc1, range(64))
    shrunk, _ = assert_exact(model)
    new = shrunk.vit.layers[1]
    assert new.attention.v_proj.out_features == 1 and new.mlp.fc1.out_features == 1
    assert not new.mlp.fc2.weight.any() and not new.attention.o_proj.weight.any()


def test_without_qkv_bias_an_empty_query_row_is_removable():
    model = model_with_biases(qkv_bias=False)
    attention = model.vit.layers[0].attention
    empty_rows(attention.q_proj, [0, 1, 16])
    shrunk, _ = assert_exact(model)
    assert shrunk.vit.layers[0].attention.qk_head_dim == 15


def test_the_attention_kernel_gets_equal_head_sizes_and_the_projections_stay_small():
    from transformers import AttentionInterface
    from transformers.models.vit.modeling_vit import eager_attention_forward

    def equal_sizes_only(module, query, key, value, *args, **kwargs):  # like flash kernels
        assert query.shape[-1] == key.shape[-1] == value.shape[-1]
        return eager_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("hf_afr_test_equal_sizes", equal_sizes_only)
    model = model_with_biases()
    model.set_attn_implementation("hf_afr_test_equal_sizes")
    attention = model.vit.layers[0].attention
    empty_rows(attention.k_proj, range(8))  # q/k 8 per head in head 0
    empty_rows(attention.k_proj, range(16, 22))  # 10 in head 1
    empty_rows(attention.v_proj, range(16, 20))  # v: 16 and 12
    empty_rows(model.vit.layers[1].attention.v_proj, range(0, 6))  # layer 1: q/k 16, v 10 and 16
    empty_rows(model.vit.layers[1].attention.v_proj, range(16, 22))
    shrunk, _ = assert_exact(model)
    new = shrunk.vit.layers[0].attention
    assert (new.qk_head_dim, new.v_head_dim, new.q_proj.out_features) == (10, 16, 20)
    new = shrunk.vit.layers[1].attention
    assert (new.qk_head_dim, new.v_head_dim, new.v_proj.out_features) == (16, 10, 20)


def test_an_untouched_model_is_unchanged_and_reported():
    model = model_with_biases()
    shrunk, report = assert_exact(model)
    assert report.macs_reduction == 0.0 and [b.removed for b in report.blocks] == ["nothing"] * 4
    assert type(shrunk.vit.layers[0].attention) is ViTAttention


def test_shrunk_model_runs_in_pipeline_inference_mode_and_torch_compile(tiny_vit_dir):
    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(tiny_vit_dir)
    for layer in model.vit.layers:
        empty_rows(layer.mlp.fc1, range(0, 40))
        empty_rows(layer.attention.k_proj, range(4))
    reference = copy.deepcopy(model).eval()
    shrink(model)
    from PIL import Image

    image = Image.new("RGB", (40, 40), (30, 200, 90))
    expected = pipeline("image-classification", model=reference, image_processor=tiny_vit_dir)
    actual = pipeline("image-classification", model=model, image_processor=tiny_vit_dir)
    got, want = actual(image), expected(image)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, want))
    x = images()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.inference_mode():
        assert (
            compiled(pixel_values=x).logits - reference(pixel_values=x).logits
        ).abs().max() < ATOL


def test_training_and_saving_a_shrunk_model_are_refused(tmp_path):
    model = model_with_biases()
    empty_rows(model.vit.layers[0].mlp.fc1, range(10))
    shrink(model)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    with pytest.raises(InferenceOnlyError, match="cannot be trained"):
        model(pixel_values=images())
    model.eval()
    with pytest.raises(InferenceOnlyError, match="cannot be saved"):
        model.save_pretrained(tmp_path)


class BiasedAttention(ViTAttention):
    """A registered class whose forward adds a logit bias: the probe must catch it."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        bias = torch.linspace(0, 3, hidden_states.shape[1])
        return super().forward(hidden_states, bias.view(1, 1, 1, -1), **kwargs)


class UnknownAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(8, 8) for _ in range(3))


def test_unsupported_layouts_are_skipped_with_a_logged_reason(caplog):
    model = model_with_biases()
    config = model.config
    biased = BiasedAttention(config)
    biased.load_state_dict(model.vit.layers[0].attention.state_dict())
    model.vit.layers[0].attention = biased
    model.extra = UnknownAttention()
    empty_rows(biased.k_proj, range(4))
    before = logits(model, images())
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        report = shrink(model)
    hf_logging.disable_propagation()
    assert "differs from plain attention" in report.skipped["vit.layers.0.attention"]
    assert "not a registered attention layout" in report.skipped["extra"]
    assert "skipped vit.layers.0.attention" in caplog.text and "skipped extra" in caplog.text
    assert type(model.vit.layers[0].attention) is BiasedAttention
    assert (logits(model, images()) - before).abs().max() <= ATOL


def test_masks_are_checked_against_the_weights():
    model = model_with_biases()
    name = "vit.layers.0.mlp.fc1.weight"
    mask = torch.ones(64, 32, dtype=torch.bool)
    mask[:3] = False
    with pytest.raises(ValueError, match="nonzero weights where its mask prunes"):
        shrink(copy.deepcopy(model), masks={name: mask})
    with pytest.raises(ValueError, match="not a parameter of this model"):
        shrink(copy.deepcopy(model), masks={"nope.weight": mask})
    empty_rows(model.vit.layers[0].mlp.fc1, range(3))
    report = shrink(model, masks={name: mask})
    assert report.blocks[1].after == "61 units"
