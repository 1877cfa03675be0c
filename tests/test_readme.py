"""The README's quick start runs as written: offline, on the embedded model and dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("single_thread")


def section_python_blocks(text: str, heading: str) -> list[str]:
    """The ```python blocks of the README section that starts with `heading`."""
    section = text.split(f"\n{heading}", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_the_quick_start_runs_offline(tmp_path, monkeypatch):
    blocks = section_python_blocks(README.read_text(), "## Quick start")
    assert len(blocks) == 2  # prune, fine-tune and save; then load, shrink and predict
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), scope)  # as a user would paste it
    pruner, classifier = scope["pruner"], scope["classifier"]
    # The masks are exact after fine-tuning: every pruned weight is zero, 90% of them.
    assert pruner.sparsity_report().sparsity == pytest.approx(0.9, abs=1e-6)
    for name, param in pruner.params.items():
        assert not param.detach()[~pruner.masks[name]].any(), name
    assert scope["trainer"].state.global_step == 10
    folder = tmp_path / "tiny-vit-afr90-digits"
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and "afr" in card.data.tags  # a local base model
    predictions = classifier(scope["test"].with_format(None)[1]["image"])
    assert {p["label"] for p in predictions} <= set(scope["labels"])

    # The structured section continues the quick start: a narrower model that loads narrow.
    (block,) = section_python_blocks(README.read_text(), "## Structured pruning")
    exec(compile(block, str(README), "exec"), scope)
    small = scope["pruner"].model
    assert scope["pruner"].sparsity_report().sparsity == pytest.approx(0.5, abs=0.02)
    size = sum(p.numel() for p in small.parameters())
    assert size < sum(p.numel() for p in pruner.model.parameters())
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "tiny-vit-afr-s50")
    assert sum(p.numel() for p in loaded.parameters()) == size
