"""Model cards: Hub metadata, rendered sections, the density plot, updates of existing READMEs."""

from __future__ import annotations

import pytest
from helpers import tiny_vit
from huggingface_hub import ModelCard

from hf_afr import AFRPruner, PrunedCardData, PrunerConfig
from hf_afr.checkpoint.card import CARD_END, CARD_START
from hf_afr.checkpoint.formats import DENSITY_PLOT_NAME


@pytest.fixture(scope="module")
def pruner() -> AFRPruner:
    pruner = AFRPruner(tiny_vit(patch_size=4), PrunerConfig(method="magnitude", sparsity=0.95))
    pruner.prune(show_progress=False)
    return pruner


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
    # No image processor was saved: the card shows the loading code that works, not `pipeline`.
    assert 'AutoModelForImageClassification.from_pretrained("me/vit-afr95")' in text
    assert 'pipeline("image-classification", model="me' not in text
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


def python_blocks(card_text: str) -> list[str]:
    """The ```python blocks of a card's text."""
    return [block.split("```", 1)[0] for block in card_text.split("```python\n")[1:]]


@pytest.mark.parametrize(
    ("checkpoint_format", "with_processor"),
    [("dense", True), ("dense", False), ("compact", True)],
)
def test_the_loading_code_of_every_card_runs(
    pruner, tmp_path, monkeypatch, checkpoint_format, with_processor
):
    from transformers import ViTImageProcessorPil

    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}) if with_processor else None
    folder = tmp_path / "my-pruned-vit"
    pruner.save_pretrained(folder, checkpoint_format, image_processor=processor)
    text = ModelCard.load(folder / "README.md").text
    blocks = python_blocks(text.split("## Pruning configuration")[0])
    assert len(blocks) == 2  # loading, then restoring the masks with the pruner
    assert ("pipeline(" in blocks[0]) == (with_processor and checkpoint_format == "dense")
    monkeypatch.chdir(tmp_path)  # the card names the model by its folder
    scope: dict = {}
    for block in blocks:
        exec(block, scope)  # the card's own code, as a user would paste it
    assert scope["pruner"].sparsity_report().sparsity == pytest.approx(0.95, abs=1e-3)
    if "classifier" in scope:
        from PIL import Image

        predictions = scope["classifier"](Image.new("RGB", (40, 40), (200, 10, 10)))
        assert len(predictions) == 3 and {"label", "score"} <= set(predictions[0])
    else:
        assert scope["model"].num_parameters() == pruner.model.num_parameters()


def test_extra_sections_render_in_order_before_the_configuration(pruner, tmp_path):
    card_data = PrunedCardData(
        repo_id="me/x",
        extra_sections={"Layer widths": "| layer | heads |", "Loading": "Run `x`."},
    )
    pruner.save_pretrained(tmp_path, card_data=card_data)
    text = ModelCard.load(tmp_path / "README.md").text
    widths, loading = text.index("## Layer widths\n\n| layer | heads |"), text.index("## Loading")
    assert widths < loading < text.index("## Pruning configuration")
    assert "Run `x`." in text and text.count(CARD_START) == 1


def test_card_details_are_given_once(pruner):
    with pytest.raises(ValueError, match="Unknown model-card details"):
        pruner.create_model_card(dataset="cifar10")
    with pytest.raises(ValueError, match="not both"):
        pruner.create_model_card(card_data=PrunedCardData(), datasets="cifar10")
    pruner.base_model = "google/vit-base-patch16-224"
    try:
        assert pruner.card_data().base_model == "google/vit-base-patch16-224"
        assert pruner.card_data(base_model="other/model").base_model == "other/model"
    finally:
        pruner.base_model = None
