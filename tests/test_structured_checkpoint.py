"""Structured checkpoints: per-layer widths, loading with and without hf_afr, compact on top."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from families import FAMILIES, IMAGE_SIZE, tiny_classifier, tiny_image_processor
from PIL import Image
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from hf_afr import PrunerConfig
from hf_afr.architectures import get_architecture
from hf_afr.checkpoint.convert import densify_checkpoint
from hf_afr.checkpoint.formats import REMOTE_CODE_NAME
from hf_afr.checkpoint.portable import STRUCTURED_QUANT_METHOD
from hf_afr.checkpoint.save import save_pruned_checkpoint
from hf_afr.checkpoint.widths import (
    LAYER_HEADS_KEY,
    LAYER_UNITS_KEY,
    build_structured_model,
    config_widths,
    count_parameters,
    model_widths,
    record_widths,
)
from hf_afr.structure import slicing

pytestmark = pytest.mark.usefixtures("single_thread")
WITHOUT_HF_AFR = Path(__file__).with_name("without_hf_afr.py")
WIDE = {"swin": {"num_heads": [2, 4]}}  # 4 heads where the tiny width allows it


def structured_classifier(family: str, seed: int = 0):
    """A tiny classifier with different widths per block, sliced by `hf_afr.structure.slicing`.

    Block i keeps one head (the last) if i is even, else all but the first; and 5 + i MLP
    units starting at unit 3: the kept heads and units are not a prefix, so a loader that
    re-derived them instead of loading the saved rows would differ.
    """
    model = tiny_classifier(family, seed=seed, **WIDE.get(family, {"num_attention_heads": 4}))
    layout = get_architecture(model).layout
    for i, block in enumerate(slicing.transformer_layers(model, layout).values()):
        n = slicing.num_heads(block, layout)
        slicing.keep_heads(block, layout, [n - 1] if i % 2 == 0 else range(1, n))
        slicing.keep_units(block, layout, range(3, 8 + i))
    with torch.no_grad():  # nonzero biases: every saved value matters
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    record_widths(model)
    return model


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


# --------------------------------------------------------------------------- widths


def test_widths_come_from_the_module_shapes_and_round_trip_through_the_config():
    model = structured_classifier("vit")
    assert model_widths(model) == ([1, 3], [5, 6])  # hand-worked from structured_classifier
    assert config_widths(model.config) == ([1, 3], [5, 6])
    assert config_widths(tiny_classifier("vit").config) is None
    attention = model.vit.layers[1].attention
    assert attention.q_proj.out_features == 3 * 8 and attention.o_proj.in_features == 3 * 8


@pytest.mark.parametrize(
    "entries, message",
    [
        ({LAYER_HEADS_KEY: [1, 2]}, "has `layer_num_attention_heads` but not"),
        ({LAYER_HEADS_KEY: [1, 0], LAYER_UNITS_KEY: [4, 4]}, "list of positive integers"),
        ({LAYER_HEADS_KEY: [1, 2], LAYER_UNITS_KEY: [4]}, "2 head counts .* but 1 MLP widths"),
    ],
)
def test_inconsistent_width_lists_are_one_clear_error(entries, message):
    with pytest.raises(ValueError, match=message):
        config_widths(entries)


def test_build_from_the_config_has_the_saved_parameter_count():
    model = structured_classifier("vit")
    built = build_structured_model(model.config)
    # Hand count: the dense tiny ViT minus the removed rows/columns of each block.
    dense = count_parameters(tiny_classifier("vit", num_attention_heads=4))
    removed = 0
    for heads, units in zip([1, 3], [5, 6]):
        removed += (4 - heads) * 8 * (3 * 32 + 3 + 32)  # q, k, v rows + biases; o columns
        removed += (64 - units) * (32 + 1 + 32)  # fc1 rows + bias; fc2 columns
    assert count_parameters(built) == count_parameters(model) == dense - removed
    built.load_state_dict(model.state_dict())
    x = images()
    assert torch.equal(logits(built, x), logits(model, x))


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_from_pretrained_with_hf_afr_loads_the_narrow_model(family, tmp_path):
    model = structured_classifier(family)
    save_pruned_checkpoint(tmp_path, model, {}, PrunerConfig())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": STRUCTURED_QUANT_METHOD}
    assert config["auto_map"]["AutoModelForImageClassification"].startswith("modeling_hf_afr")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert not hasattr(loaded.config, "quantization_config")
    assert count_parameters(loaded) == count_parameters(model)
    assert model_widths(loaded) == model_widths(model)
    x = images()
    torch.testing.assert_close(logits(loaded, x), logits(model, x), atol=1e-5, rtol=0)


def test_the_modeling_file_carries_slicing_verbatim(tmp_path):
    import inspect

    save_pruned_checkpoint(tmp_path, structured_classifier("vit"), {}, PrunerConfig())
    source = (tmp_path / REMOTE_CODE_NAME).read_text()
    assert source.startswith(inspect.getsource(slicing).rstrip("\n"))
    assert "hf_afr" not in "".join(
        line for line in source.splitlines() if line.startswith(("import", "from"))
    )


def test_widths_that_disagree_with_the_weights_are_one_line(tmp_path):
    save_pruned_checkpoint(tmp_path, structured_classifier("vit"), {}, PrunerConfig())
    config = json.loads((tmp_path / "config.json").read_text())
    config[LAYER_UNITS_KEY] = [5, 7]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        AutoModelForImageClassification.from_pretrained(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert (
        "model.safetensors: layer 1" in message and "`layer_intermediate_sizes[1]` = 7" in message
    )


def test_structured_and_sparse_saves_compact_and_loads_back(tmp_path):
    model = structured_classifier("vit")
    generator = torch.Generator().manual_seed(5)
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".layers." in name and name.endswith("weight") and param.dim() == 2:
                masks[name] = torch.rand(param.shape, generator=generator) > 0.5
                param.mul_(masks[name])
    save_pruned_checkpoint(tmp_path, model, masks, PrunerConfig(), checkpoint_format="compact")
    assert not (tmp_path / REMOTE_CODE_NAME).exists()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert count_parameters(loaded) == count_parameters(model)
    for name, mask in masks.items():
        assert torch.equal(loaded.get_parameter(name) != 0, mask & (model.get_parameter(name) != 0))
    x = images()
    torch.testing.assert_close(logits(loaded, x), logits(model, x), atol=1e-5, rtol=0)
    densify_checkpoint(tmp_path, tmp_path / "dense")  # and back to the dense format, narrow
    dense = AutoModelForImageClassification.from_pretrained(tmp_path / "dense")
    assert count_parameters(dense) == count_parameters(model)
    torch.testing.assert_close(logits(dense, x), logits(model, x), atol=1e-5, rtol=0)


def test_a_loaded_structured_model_fine_tunes_with_trainer(tmp_path):
    model = structured_classifier("vit")
    save_pruned_checkpoint(tmp_path / "ckpt", model, {}, PrunerConfig())
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "ckpt")
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    data = [{"pixel_values": x, "labels": torch.tensor(i % 3)} for i, x in enumerate(images(4))]
    args = TrainingArguments(
        str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4, report_to=[],
        use_cpu=True, learning_rate=0.1, save_strategy="no",
    )  # fmt: skip
    Trainer(model=loaded, args=args, train_dataset=data).train()
    after = loaded.state_dict()
    assert all(after[k].shape == v.shape for k, v in before.items())
    assert not torch.equal(
        after["vit.layers.1.mlp.fc1.weight"], before["vit.layers.1.mlp.fc1.weight"]
    )


# --------------------------------------------------------------------------- without hf_afr


def run_without_hf_afr(job: dict, tmp_path: Path) -> dict:
    """Run `without_hf_afr.py` on `job` in a fresh interpreter that cannot import hf_afr."""
    job = {**job, "results": str(tmp_path / "results.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(WITHOUT_HF_AFR), str(tmp_path / "job.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_every_family_loads_without_hf_afr_through_remote_code(tmp_path):
    x = images()
    models, job = {}, {"models": {}}
    for family in FAMILIES:
        model = models[family] = structured_classifier(family)
        folder = tmp_path / family
        processor = tiny_image_processor(family) if family == "vit" else None
        save_pruned_checkpoint(folder, model, {}, PrunerConfig(), image_processor=processor)
        torch.save((x, logits(model, x)), folder / "reference.pt")
        job["models"][family] = {"source": str(folder), "reference": str(folder / "reference.pt")}
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    job["models"]["vit"] |= {"pipeline": str(tmp_path / "image.png"), "train": True}
    mismatched = tmp_path / "mismatched"  # widths that disagree with the weights
    save_pruned_checkpoint(mismatched, models["vit"], {}, PrunerConfig())
    config = json.loads((mismatched / "config.json").read_text())
    config[LAYER_UNITS_KEY] = [5, 7]
    (mismatched / "config.json").write_text(json.dumps(config))
    job["models"]["mismatched"] = {"source": str(mismatched), "expect_error": True}
    results = run_without_hf_afr(job, tmp_path)
    assert results["hf_afr_importable"] is False
    error = results["models"]["mismatched"]["error"]
    assert error.startswith("ValueError: ") and "\n" not in error
    assert "vit.layers.1.mlp.fc1" in error and "layer_intermediate_sizes" in error
    for family, model in models.items():
        result = results["models"][family]
        assert result["class_mro"] == [f"Structured{type(model).__name__}", type(model).__name__]
        assert result["parameters"] == count_parameters(model), family
        assert result["max_abs_diff"] <= 1e-5, family
    processor = tiny_image_processor("vit")
    pixel_values = processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
    expected = int(logits(models["vit"], pixel_values).argmax())
    assert results["models"]["vit"]["pipeline_label"] == models["vit"].config.id2label[expected]
    assert results["models"]["vit"]["trained"] is True


def test_the_card_says_how_to_load_both_ways(tmp_path):
    processor = tiny_image_processor("vit")
    model = structured_classifier("vit")
    save_pruned_checkpoint(
        tmp_path / "tiny-s", model, {}, PrunerConfig(), image_processor=processor
    )
    card = (tmp_path / "tiny-s" / "README.md").read_text()
    folder = str(tmp_path / "tiny-s")  # the card names the folder as it was written
    assert f'model = AutoModelForImageClassification.from_pretrained("{folder}")' in card
    assert f'pipeline("image-classification", model="{folder}", trust_remote_code=True)' in card
    assert "| vit.layers.1 | 3/4 | 6/64 |" in card  # per-layer widths
    assert f"| parameters | 24,003 | {count_parameters(model):,} |" in card
    assert "zeros in the pruned places" not in card and "restore them with the pruner" not in card
