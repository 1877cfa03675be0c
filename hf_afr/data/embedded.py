"""The registry of embedded offline datasets: name -> `DatasetDict` builder.

The scripts load them as `--dataset_name hf_afr:<name>`; docs/data.md describes each one.

- `digits`: scikit-learn's 1797 real handwritten digits (8x8 scans upsampled to 32 px),
  10 classes, stratified 80/20 train/validation split (1437 / 360 images).
- `cyrillic`: 30 Cyrillic letters absent from the default model's pretraining, rendered and
  augmented; train on the proportional training fonts (40 per class, 1200 images), validate on
  held-out monospaced fonts (20 per class, 600 images).
- `typefaces`: which of 20 typefaces drew a Latin letter (fine-grained); train on 40 letters
  (60 per class, 1200 images), validate on 12 held-out letters (20 per class, 400 images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EMBEDDED_PREFIX = "hf_afr:"


@dataclass(frozen=True)
class EmbeddedDataset:
    """A registered embedded dataset: its builder and a one-line description."""

    name: str
    build: Callable[[], Any]  # () -> datasets.DatasetDict with "train" and "validation"
    description: str


def _digits():
    from datasets import DatasetDict

    from .digits import digits_dataset

    return DatasetDict(train=digits_dataset("train"), validation=digits_dataset("test"))


def _cyrillic():
    from datasets import DatasetDict

    from .glyphs import glyph_dataset

    return DatasetDict(
        train=glyph_dataset("cyrillic", "train", samples_per_class=40, seed=1),
        validation=glyph_dataset("cyrillic", "test", samples_per_class=20, seed=2),
    )


def _typefaces():
    from datasets import DatasetDict

    from .typefaces import typeface_dataset

    return DatasetDict(
        train=typeface_dataset("train", samples_per_class=60, seed=1),
        validation=typeface_dataset("test", samples_per_class=20, seed=2),
    )


EMBEDDED_DATASETS: dict[str, EmbeddedDataset] = {
    d.name: d
    for d in (
        EmbeddedDataset("digits", _digits, "real handwritten digits (scikit-learn), 10 classes"),
        EmbeddedDataset("cyrillic", _cyrillic, "rendered Cyrillic letters, held-out fonts"),
        EmbeddedDataset("typefaces", _typefaces, "20 typefaces, held-out letters"),
    )
}


def embedded_dataset_names() -> list[str]:
    """The names to pass as `hf_afr:<name>`."""
    return list(EMBEDDED_DATASETS)


def load_embedded_dataset(name: str):
    """Build the embedded dataset `name` (with or without the `hf_afr:` prefix).

    Returns:
        `datasets.DatasetDict` with `train` and `validation` splits (`image`, `label`).
    """
    key = name[len(EMBEDDED_PREFIX) :] if name.startswith(EMBEDDED_PREFIX) else name
    if key not in EMBEDDED_DATASETS:
        choices = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_DATASETS)
        raise ValueError(f"Unknown embedded dataset {name!r}; choose one of: {choices}.")
    return EMBEDDED_DATASETS[key].build()
