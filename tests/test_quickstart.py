"""README's main job: scripts/quickstart.json drives scripts/finetune.py on embedded data."""

import json
import runpy
from pathlib import Path

import pytest
from helpers import tiny_vit
from huggingface_hub import ModelCard
from transformers import ViTForImageClassification, ViTImageProcessor

import hf_afr
from hf_afr.workflow.data import load_embedded_dataset

REPO = Path(__file__).resolve().parents[1]


def test_embedded_datasets_load_offline():
    digits = load_embedded_dataset("hf_afr:digits")
    assert set(digits) == {"train", "validation"}
    assert digits["train"].features["label"].names == [str(d) for d in range(10)]
    assert len(digits["train"]) + len(digits["validation"]) == 1797
    with pytest.raises(ValueError, match="hf_afr:digits"):
        load_embedded_dataset("hf_afr:mnist")


def test_quickstart_arguments_run_end_to_end(tmp_path):
    args = json.loads((REPO / "scripts" / "quickstart.json").read_text())
    assert Path(REPO / args["model_name_or_path"]) == hf_afr.DEFAULT_MODEL
    model_dir = tmp_path / "model"  # a tiny stand-in for the embedded model keeps this fast
    tiny_vit(num_labels=3).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    args.update(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        num_batches=1,
        scoring_batch_size=16,
        min_density=0.05,
    )
    (tmp_path / "args.json").write_text(json.dumps(args))
    finetune = runpy.run_path(str(REPO / "scripts" / "finetune.py"))
    metrics = finetune["main"]([str(tmp_path / "args.json")])
    assert metrics["weight_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    model = ViTForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 10
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "afr" in card.data.tags
    assert (tmp_path / "out" / "sparsity_per_layer.png").is_file()
