"""`scripts/finetune.py` end to end for every family, from the kind of checkpoint its Hub
models are published as: score (AFR), prune, fine-tune under exact masks, save dense with a
card, reload, save compact, reload."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import load_script
from families import FAMILIES, tiny_backbone, tiny_classifier, tiny_config, tiny_image_processor
from huggingface_hub import ModelCard
from test_architectures import EXPECTED
from transformers import AutoModelForImageClassification

from hf_afr import AFRPruner
from hf_afr.checkpoint.masks_file import MASKS_NAME, load_masks

finetune = load_script("finetune")

# How each family's usual Hub checkpoints are published (e.g. facebook/dinov2-base is a bare
# Dinov2Model, openai/clip-* a dual-encoder CLIPModel, the distilled DeiTs a classifier with
# teacher heads): each script run starts from that kind of checkpoint.
PUBLISHED_AS = {
    "vit_msn": "backbone",
    "deit": "DeiTForImageClassificationWithTeacher",
    "dinov2": "backbone",
    "dinov2_with_registers": "backbone",
    "ijepa": "backbone",
    "clip": "backbone",
    "siglip": "siglip_vision_model",
}


def published_checkpoint(model_type: str, folder) -> None:
    kind = PUBLISHED_AS.get(model_type, "classifier")
    if kind == "classifier":
        model = tiny_classifier(model_type)
    elif kind == "backbone":
        model = tiny_backbone(model_type)
    elif kind.endswith("_vision_model"):
        model = tiny_backbone(kind)
    else:
        torch.manual_seed(0)
        model = getattr(T, kind)(tiny_config(model_type))
    model.save_pretrained(folder)
    tiny_image_processor(model_type).save_pretrained(folder)


def encoder_weights(model, masks) -> dict[str, torch.Tensor]:
    return {name: model.get_parameter(name).detach().clone() for name in masks}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
def test_finetune_script_prunes_trains_saves_and_reloads(model_type, image_folder, tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    published_checkpoint(model_type, source)
    args = [
        "--model_name_or_path", source,
        "--train_dir", image_folder / "train",
        "--validation_dir", image_folder / "validation",
        "--output_dir", out,
        "--cache_dir", tmp_path / "cache",
        "--method", "afr",
        "--sparsity", "0.8",
        "--num_batches", "1",
        "--per_device_train_batch_size", "4",
        "--do_train", "--do_eval",
        "--max_steps", "2",
        "--learning_rate", "1e-2",
        "--save_strategy", "no",
        "--use_cpu",
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    metrics = finetune.main([str(a) for a in args])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["mask_sparsity"] == pytest.approx(0.8, abs=1e-3)

    # The dense checkpoint loads with plain transformers: pruned weights exactly zero, kept
    # weights trained (they moved away from the starting point).
    masks = load_masks(out / MASKS_NAME)
    dense = AutoModelForImageClassification.from_pretrained(out)
    assert dense.config.model_type == model_type and dense.config.num_labels == 3
    trained = encoder_weights(dense, masks)
    start = AFRPruner.from_pretrained(source, num_labels=3)
    initial = encoder_weights(start.model, masks)
    for name, mask in masks.items():
        assert torch.count_nonzero(trained[name][~mask]) == 0, name
    assert any(not torch.equal(trained[n][m], initial[n][m]) for n, m in masks.items())
    saved_config = json.loads((out / "pruner_config.json").read_text())
    assert saved_config["feature_token"] == EXPECTED[model_type][0]
    card = ModelCard.load(out / "README.md")
    assert model_type in card.data.tags and "a ViT" not in card.text

    # Reload with its masks, save compact, reload compact: same weights, same masks.
    reloaded = AFRPruner.from_pretrained(out)
    assert all(torch.equal(reloaded.masks[n], masks[n]) for n in masks)
    reloaded.save_pretrained(tmp_path / "compact", checkpoint_format="compact", model_card=False)
    compact = AutoModelForImageClassification.from_pretrained(tmp_path / "compact")
    expected = dense.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in compact.state_dict().items())
    restored = AFRPruner.from_pretrained(tmp_path / "compact")
    assert restored.config == reloaded.config
    assert all(torch.equal(restored.masks[n], masks[n]) for n in masks)
