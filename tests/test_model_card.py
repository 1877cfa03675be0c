"""Model cards: Hub metadata, rendered sections, the density plot, updates of existing READMEs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_vit
from huggingface_hub import ModelCard

from hf_afr import AFRPruner, PrunerConfig
from hf_afr.model_card import CARD_END, CARD_START, DENSITY_PLOT_NAME, TEMPLATE_PATH

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruner() -> AFRPruner:
    pruner = AFRPruner(tiny_vit(patch_size=4), PrunerConfig(method="magnitude", sparsity=0.95))
    pruner.prune(show_progress=False)
    return pruner


def test_packaged_template_is_the_top_level_one():
    assert TEMPLATE_PATH.read_text() == (REPO_ROOT / "model_cards" / TEMPLATE_PATH.name).read_text()


def test_dense_card_metadata_and_sections(pruner, tmp_path):
    pruner.save_pretrained(
        tmp_path,
        model_card_kwargs={
            "base_model": "google/vit-base-patch16-224",
            "datasets": "cifar10",
            "accuracy": 0.9489,
            "eval_split": "test",
            "repo_id": "me/vit-afr95",
            "license": "apache-2.0",
            "command": "python scripts/prune.py --method magnitude --sparsity 0.95",
        },
    )
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.base_model == "google/vit-base-patch16-224" and data.datasets == ["cifar10"]
    assert {"hf_afr", "pruning", "sparse", "afr", "magnitude"} <= set(data.tags)
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == (
        "accuracy",
        0.9489,
        "cifar10",
    )
    assert result.dataset_split == "test"
    text = card.text
    assert "95.0% sparse version of [google/vit-base-patch16-224]" in text
    assert 'pipeline("image-classification", model="me/vit-afr95")' in text
    assert 'AFRPruner.from_pretrained("me/vit-afr95")' in text
    assert "python scripts/prune.py --method magnitude --sparsity 0.95" in text
    assert '"sparsity": 0.95' in text and "| **total** |" in text
    assert f"![Per-layer density]({DENSITY_PLOT_NAME})" in text
    assert (tmp_path / DENSITY_PLOT_NAME).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_compact_card_says_how_to_load_it(pruner, tmp_path):
    pruner.save_pretrained(
        tmp_path, checkpoint_format="compact", model_card_kwargs={"repo_id": "me/x"}
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "hf_afr"
    assert "import hf_afr" in card.text
    assert 'AutoModelForImageClassification.from_pretrained("me/x")' in card.text
    assert "hf-afr densify me/x" in card.text
    # Without a command, the card shows the equivalent Python code.
    assert "pruner.save_pretrained('pruned-vit', checkpoint_format='compact')" in card.text


def test_existing_readme_is_updated_not_clobbered(pruner, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "---\nlicense: mit\ntags:\n- my-tag\nmodel-index:\n- name: mine\n  results:\n  - task:\n"
        "      type: image-classification\n    dataset:\n      name: pets\n      type: pets\n"
        "    metrics:\n    - type: accuracy\n      value: 0.5\n---\n\n# My notes\n\nHand-written text.\n"
    )
    for accuracy in (0.7, 0.8):
        pruner.save_pretrained(
            tmp_path, model_card_kwargs={"datasets": ["cifar10"], "accuracy": accuracy}
        )
    card = ModelCard.load(readme)
    assert card.data.license == "mit" and {"my-tag", "hf_afr"} <= set(card.data.tags)
    results = {r.dataset_type: r.metric_value for r in card.data.eval_results}
    assert results == {"pets": 0.5, "cifar10": 0.8}
    assert card.text.index("Hand-written text.") < card.text.index(CARD_START)
    assert card.text.count(CARD_START) == card.text.count(CARD_END) == 1


def test_card_needs_a_dataset_for_accuracy(pruner):
    with pytest.raises(ValueError, match="eval_dataset"):
        pruner.create_model_card(accuracy=0.9)


def test_card_needs_masks():
    with pytest.raises(ValueError, match="prune"):
        AFRPruner(tiny_vit(), PrunerConfig()).create_model_card()
