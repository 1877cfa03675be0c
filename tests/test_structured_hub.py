"""Hub round trip of a structured model: pushed with hf_afr, run where hf_afr is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families import IMAGE_SIZE, tiny_image_processor
from huggingface_hub import constants
from PIL import Image
from test_hub import FIXTURE_TOKEN, hub  # noqa: F401 - the local Hub server fixture
from test_structured_checkpoint import (
    images,
    logits,
    run_without_hf_afr,
    structured_classifier,
)
from transformers import AutoModelForImageClassification

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.checkpoint.formats import REMOTE_CODE_NAME
from hf_afr.checkpoint.widths import count_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow
def test_push_then_run_without_hf_afr(hub, tmp_path, monkeypatch):  # noqa: F811
    pruner = AFRPruner(structured_classifier("vit"), PrunerConfig(method="magnitude"))
    repo = "tester/tiny-structured"
    pruner.push_to_hub(repo, image_processor=tiny_image_processor("vit"))
    files = hub.files(repo)
    assert {REMOTE_CODE_NAME, "config.json", "model.safetensors", "README.md"} <= set(files)
    assert "structurally pruned" in hub.repos[repo].messages[-1]
    config = json.loads(files["config.json"])
    assert config["layer_num_attention_heads"] == [1, 3]

    # With hf_afr, through the Hub: plain from_pretrained, no remote code.
    loaded = AutoModelForImageClassification.from_pretrained(repo)
    x = images()
    torch.testing.assert_close(logits(loaded, x), logits(pruner.model, x), atol=1e-5, rtol=0)

    # Without hf_afr, in a fresh interpreter downloading from the same local Hub.
    torch.save((x, logits(pruner.model, x)), tmp_path / "reference.pt")
    pixels = np.random.default_rng(1).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    job = {"models": {repo: {"source": repo, "reference": str(tmp_path / "reference.pt")}}}
    job["models"][repo]["pipeline"] = str(tmp_path / "image.png")
    for key, value in {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "download-cache"),
        "HF_TOKEN": FIXTURE_TOKEN,
    }.items():
        monkeypatch.setenv(key, value)
    results = run_without_hf_afr(job, tmp_path)
    assert results["hf_afr_importable"] is False
    result = results["models"][repo]
    assert result["parameters"] == count_parameters(pruner.model)
    assert result["max_abs_diff"] <= 1e-5
    processor = tiny_image_processor("vit")
    pixel_values = processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
    expected = int(logits(pruner.model, pixel_values).argmax())
    assert result["pipeline_label"] == pruner.model.config.id2label[expected]
    assert str(tmp_path / "download-cache") != constants.HF_HUB_CACHE  # nothing shared in-process
