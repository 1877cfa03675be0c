"""`PrunedCardData`: what a pruned model's card says beyond its masks and pruning config.

Built once (by `AFRPruner`, or by the scripts with `hf_afr.workflow.steps.card_details`) and
handed down unchanged through `push_to_hub` and `save_pruned_checkpoint` to `create_model_card`,
in the spirit of `huggingface_hub.ModelCardData`. What only the save knows (the weights' size,
whether an image processor was saved, the folder's name) is passed beside it, not written into it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PrunedCardData:
    """The details a pruned model's card reports.

    Args:
        model_name (`str`, *optional*): title of the card; defaults to the repository's (or the
            folder's) name.
        repo_id (`str`, *optional*): Hub id used in the loading code (default: `model_name`).
        base_model (`str`, *optional*): the model that was pruned: a Hub id (then also in the
            metadata) or a local path (named in the text only).
        datasets (`str` or `list[str]`, *optional*): Hub ids of the scoring / fine-tuning data.
        accuracy (`float`, *optional*): top-1 accuracy to report in `model-index`, as measured.
        eval_dataset (`str`, *optional*): dataset of `accuracy`; defaults to the first of `datasets`.
        eval_split (`str`, *optional*): split of `accuracy`, e.g. `"test"`.
        license (`str`, *optional*), language (`str` or `list[str]`, *optional*): card metadata.
        tags (`list[str]`, *optional*): extra tags, added to hf_afr's.
        command (`str`, *optional*): the command that produced the checkpoint (shell); defaults to
            the equivalent Python code. Never put a token in it.
        training (`dict`, *optional*): fine-tuning settings to list in the card (name -> value,
            e.g. `{"epochs": 8, "learning rate": 0.001}`).
        extra_sections (`dict[str, str]`, *optional*): more sections, title -> Markdown body,
            rendered in this order after the checkpoint-format section.

    Example:
        ```python
        >>> card = PrunedCardData(datasets="cifar10", accuracy=0.95, eval_split="test")
        >>> pruner.save_pretrained("vit-afr90", card_data=card)
        ```
    """

    model_name: str | None = None
    repo_id: str | None = None
    base_model: str | None = None
    datasets: str | list[str] | None = None
    accuracy: float | None = None
    eval_dataset: str | None = None
    eval_split: str | None = None
    license: str | None = None
    language: str | list[str] | None = None
    tags: list[str] | None = None
    command: str | None = None
    training: Mapping[str, Any] | None = None
    extra_sections: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrunedCardData:
        """The card data of a dict of card details; an unknown key is a `ValueError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown model-card details {unknown}; the card takes {', '.join(names)}."
            )
        return cls(**values)

    def replace(self, **changes: Any) -> PrunedCardData:
        """A copy with `changes` (the card data itself never changes)."""
        return dataclasses.replace(self, **changes)
