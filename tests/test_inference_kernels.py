"""Sparse kernels and the per-layer choice of `to_sparse_inference` (no speed is asserted here)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vit
from torch import nn

from hf_afr import AFRPruner, PrunerConfig, SparseInferenceConfig, to_sparse_inference
from hf_afr.inference import InferenceOnlyError, SparseLinear, kernels, module_bytes
from hf_afr.inference import convert as convert_module
from hf_afr.inference.timing import Timing, time_side_by_side

pytestmark = pytest.mark.usefixtures("single_thread")


def sparse_linear(out_f=48, in_f=64, sparsity=0.95, bias=True, seed=0) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=generator))
        layer.weight[torch.rand(out_f, in_f, generator=generator) < sparsity] = 0
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=generator))
    return layer.eval()


def block_sparse_linear(block=16, kept_blocks=((0, 1), (2, 0))) -> nn.Linear:
    layer = sparse_linear(64, 48, sparsity=0.0)
    with torch.no_grad():
        keep = torch.zeros(64 // block, 48 // block)
        for r, c in kept_blocks:
            keep[r, c] = 1
        layer.weight.mul_(keep.repeat_interleave(block, 0).repeat_interleave(block, 1))
    return layer


@pytest.mark.parametrize("kernel, block", [("csr", None), ("bsr", 16)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48)])
def test_sparse_linear_equals_the_dense_layer(kernel, block, bias, shape):
    dense = block_sparse_linear() if kernel == "bsr" else sparse_linear(64, 48, bias=bias)
    if not bias:
        dense.bias = None
    module = kernels.build_sparse_linear(dense, kernel, block)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    out = module(x)
    assert out.shape == (*shape[:-1], 64) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, dense.weight, dense.bias), atol=1e-5, rtol=1e-5)
    assert f"kernel={kernel} (int32 indices" in repr(module)
    assert "weight" not in dict(module.named_parameters())  # no dense copy


def test_csr_memory_is_values_plus_int32_indices():
    dense = sparse_linear(256, 512, sparsity=0.95)
    module = kernels.build_sparse_linear(dense, "csr")
    nnz = int(dense.weight.ne(0).sum())
    assert module_bytes(module) == nnz * (4 + 4) + (256 + 1) * 4 + 256 * 4
    assert module_bytes(module) < 0.15 * module_bytes(dense)
    module.train()
    with pytest.raises(RuntimeError, match="cannot be trained"):
        module(torch.randn(2, 512))


def test_candidates_follow_the_weight_structure():
    config = SparseInferenceConfig()
    candidates, skipped = kernels.kernel_candidates(sparse_linear(64, 64, sparsity=0.95), config)
    assert set(candidates) == {"csr"}
    assert "of blocks nonzero" in skipped["bsr"]
    assert "CUDA" in skipped["semi_structured"] or "no torch.sparse" in skipped["semi_structured"]
    candidates, _ = kernels.kernel_candidates(block_sparse_linear(), config)
    assert set(candidates) == {"csr", "bsr16"}  # 48 is not a multiple of 32
    _, skipped = kernels.kernel_candidates(sparse_linear(sparsity=0.3), config)
    assert "min_sparsity" in skipped["csr"]


def test_semi_structured_checks_the_pattern_its_dtype_needs():
    weight = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]])
    assert kernels.has_nm_pattern(weight, 2, 4) and not kernels.has_nm_pattern(weight, 1, 2)
    assert kernels.semi_structured_pattern_problem(weight.half()) is None
    assert "1:2 pattern" in kernels.semi_structured_pattern_problem(weight)  # float32 needs 1:2
    assert "2:4 pattern" in kernels.semi_structured_pattern_problem(
        torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.bfloat16)
    )
    assert "not supported" in kernels.semi_structured_pattern_problem(weight.double())
    problem = kernels.semi_structured_device_problem(weight.half())
    if hasattr(torch.sparse, "to_sparse_semi_structured"):
        assert problem == "needs a CUDA device (the weight is on cpu)"
    else:
        assert "has no torch.sparse.to_sparse_semi_structured" in problem


def fake_timings(speedups: dict[str, float]):
    """A stand-in for `time_side_by_side` that returns the given speed-ups (no timing)."""

    def fake(variants, baseline, *args, **kwargs):
        speedup = {k: 1.0 if k == baseline else speedups.get(k, 0.5) for k in variants}
        return {k: Timing(1.0, speedup[k], (1, 1), speedup[k]) for k in variants}

    return fake


def pruned_vit(sparsity=0.95, dtype=torch.float32, pattern=None):
    config = PrunerConfig(
        method="magnitude", sparsity=None if pattern else sparsity, pattern=pattern
    )
    pruner = AFRPruner(tiny_vit(initializer_range=0.3).to(dtype), config)
    pruner.prune()
    return pruner


def images(n=2, dtype=torch.float32):
    return {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3)).to(
            dtype
        )
    }


def test_the_faster_kernel_wins_and_dense_stays_where_dense_wins(monkeypatch):
    pruner = pruned_vit()
    model, dense_bytes = pruner.model, module_bytes(pruner.model)
    monkeypatch.setattr(convert_module, "time_side_by_side", fake_timings({"csr": 1.05}))
    config = SparseInferenceConfig(shrink=False, min_speedup=1.1)
    report = to_sparse_inference(model, config, images())
    assert all(type(m) is not SparseLinear for m in model.modules())  # 1.05 < min_speedup 1.1
    assert report.bytes_after == dense_bytes

    pruner = pruned_vit()
    model = pruner.model
    monkeypatch.setattr(convert_module, "time_side_by_side", fake_timings({"csr": 3.0}))
    report = to_sparse_inference(model, SparseInferenceConfig(shrink=False), images())
    sparse = {n for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert sparse == {n[: -len(".weight")] for n in pruner.masks}  # the classifier is dense
    assert {c.name for c in report.layers if c.kernel == "csr"} == sparse
    assert all(c.speedup == 3.0 for c in report.layers if c.kernel == "csr")
    assert "measured 3.00x dense" in repr(model.vit.layers[0].mlp.fc1)
    encoder_dense = sum(c.bytes_dense for c in report.layers if c.kernel == "csr")
    encoder_now = sum(c.bytes_now for c in report.layers if c.kernel == "csr")
    assert encoder_now < 0.25 * encoder_dense  # 95% sparse, values + int32 indices
    assert report.bytes_after < 0.5 * report.bytes_before
    assert "| vit.layers.0.mlp.fc1 | 64x32 |" in report.to_markdown()


def test_layers_of_the_same_kind_decide_on_their_pooled_speed_ups():
    from hf_afr.inference.convert import _decide
    from hf_afr.inference.report import LayerChoice

    def layer(name, speedup, shape=(64, 32), sparsity=0.95):
        return LayerChoice(name, shape, 17, sparsity, "dense", None, {"csr": speedup})

    alike = [layer("a", 1.6), layer("b", 0.5), layer("c", 0.7)]  # one noisy win, median 0.7
    other = layer("d", 1.2, shape=(32, 32))
    denser = layer("e", 1.3, sparsity=0.90)
    _decide([*alike, other, denser], SparseInferenceConfig())
    assert [c.kernel for c in alike] == ["dense"] * 3 and all(c.pooled_over == 3 for c in alike)
    assert other.kernel == denser.kernel == "csr" and other.speedup == 1.2


def test_a_kernel_that_gets_a_layer_wrong_is_never_chosen(monkeypatch):
    def wrong(linear, kernel, block_size=None, speedup=None):
        weight = linear.weight.detach().clone()
        weight[weight != 0] *= 1.01
        return SparseLinear(weight.to_sparse_csr(), linear.bias, "csr", 0.05)

    monkeypatch.setattr(kernels, "build_sparse_linear", wrong)
    monkeypatch.setattr(convert_module, "time_side_by_side", fake_timings({"csr": 9.0}))
    model = pruned_vit().model
    report = to_sparse_inference(model, SparseInferenceConfig(shrink=False), images())
    assert all(c.kernel == "dense" for c in report.layers)
    assert "its output differs from the dense layer" in report.layers[0].skipped["csr"]


def test_unavailable_semi_structured_kernels_are_reported_plainly(monkeypatch, caplog):
    import logging

    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(convert_module, "time_side_by_side", fake_timings({}))
    pruner = pruned_vit(dtype=torch.bfloat16, pattern="2:4")
    hf_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        report = to_sparse_inference(
            pruner.model, SparseInferenceConfig(shrink=False), images(dtype=torch.bfloat16)
        )
    hf_logging.disable_propagation()
    if hasattr(torch.sparse, "to_sparse_semi_structured"):
        assert "12 Linear layers have the pattern of the semi-structured (2:4)" in caplog.text
        assert "unavailable here: needs a CUDA device" in caplog.text
    assert all(c.kernel == "dense" for c in report.layers)


def test_semi_structured_path_up_to_the_kernel_call(monkeypatch):
    calls = []

    def fake_kernel(weight):  # stands in for torch.sparse.to_sparse_semi_structured on CUDA
        assert kernels.has_nm_pattern(weight, 2, 4)
        calls.append(tuple(weight.shape))
        return weight.clone()

    monkeypatch.setattr(kernels, "semi_structured_device_problem", lambda weight: None)
    monkeypatch.setattr(kernels, "to_semi_structured", fake_kernel)
    monkeypatch.setattr(convert_module, "time_side_by_side", fake_timings({"semi_structured": 1.5}))
    pruner = pruned_vit(dtype=torch.bfloat16, pattern="2:4")
    model = pruner.model
    config = SparseInferenceConfig(shrink=False, kernels=("semi_structured",))
    report = to_sparse_inference(model, config, images(dtype=torch.bfloat16))
    chosen = {c.name for c in report.layers if c.kernel == "semi_structured"}
    assert chosen == {n[: -len(".weight")] for n in pruner.masks}
    assert len(calls) == len(chosen)
    assert "kernel=semi_structured" in repr(model.vit.layers[1].attention.q_proj)
    assert (
        "not have the 2:4 pattern"
        in next(c for c in report.layers if c.name == "classifier").skipped["semi_structured"]
    )


def test_conversion_of_a_dense_checkpoint_saved_by_hf_afr(tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageClassification, ViTImageProcessorPil, pipeline

    from hf_afr.checkpoint.masks_file import MASKS_NAME, load_masks

    pruner = pruned_vit(0.9)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    pruner.save_pretrained(tmp_path, image_processor=processor, model_card=False)
    reference = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    masks = load_masks(str(tmp_path / MASKS_NAME))
    config = SparseInferenceConfig(timing_rounds=1, min_time_per_call=0.0)
    report = to_sparse_inference(model, config, images(4), masks=masks)
    assert len(report.layers) == 2 * 6 + 1 and report.max_abs_diff < 1e-4
    x = images(3)["pixel_values"] * 2
    with torch.inference_mode():
        diff = (model(pixel_values=x).logits - reference(pixel_values=x).logits).abs().max()
    assert diff < 1e-4
    image = Image.new("RGB", (40, 40), (200, 30, 90))
    got = pipeline("image-classification", model=model, image_processor=processor)(image)
    want = pipeline("image-classification", model=reference, image_processor=processor)(image)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, want))
    with pytest.raises(InferenceOnlyError, match="cannot be trained"):
        model.train()(pixel_values=x)


def test_bad_options_and_inputs_are_clear_errors():
    for kwargs, message in [
        ({"kernels": ("csr", "ell")}, "Unknown kernels"),
        ({"min_speedup": 0.0}, "min_speedup"),
        ({"min_sparsity": 1.0}, "min_sparsity"),
        ({"timing_rounds": 0}, "timing_rounds"),
        ({"bsr_max_block_density": 0}, "bsr_max_block_density"),
        ({"drop_slower_than": 1.0}, "drop_slower_than"),
    ]:
        with pytest.raises(ValueError, match=message):
            SparseInferenceConfig(**kwargs)
    assert SparseInferenceConfig(kernels="csr").kernels == ("dense", "csr")
    with pytest.raises(ValueError, match="must be a SparseInferenceConfig"):
        to_sparse_inference(tiny_vit(), {"shrink": False})
    with pytest.raises(ValueError, match="pass `example_inputs`"):
        to_sparse_inference(nn.Sequential(nn.Linear(4, 4)))


def test_side_by_side_timing_reports_ratios_against_the_baseline():
    timings = time_side_by_side(
        {"a": lambda: time.sleep(0.002), "b": lambda: time.sleep(0.006)}, "a", rounds=3, min_time=0
    )
    assert timings["a"].speedup == timings["a"].best_speedup == 1.0
    assert timings["b"].speedup < 0.8 and timings["b"].seconds > timings["a"].seconds
    assert timings["b"].best_speedup < 0.8
    timings = time_side_by_side(
        {"a": lambda: time.sleep(0.001), "b": lambda: time.sleep(0.02)}, "a", 3, 0, None, 3.0
    )
    assert timings["b"].speedup < 1 / 3 and timings["b"].speedup_range[0] == timings["b"].speedup
    with pytest.raises(ValueError, match="baseline"):
        time_side_by_side({"a": lambda: None}, "z")
