"""Glyph sets, split names and argument checks shared by the embedded datasets.

Glyph sets
    ``"pretrain"``: Latin upper/lower case, Greek letters that do not look like Latin ones and
    math/punctuation symbols (the pretraining classes; no Arabic digits, no Cyrillic).
    ``"cyrillic"``: Cyrillic letters whose shapes do not occur among the pretraining classes
    (a downstream task with classes disjoint from pretraining).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

_LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Greek letters whose shapes differ from Latin ones (no Alpha, Beta, ..., omicron, nu).
_GREEK = "ΓΔΘΛΞΠΣΦΨΩ" + "αβγδεζηθικλμξπρσςτυφχψω"
# Math and punctuation symbols; look-alikes of letters are left out (∑ ∏ ∈ ∝ ∧ ∨ ∪ ∩ ×).
_SYMBOLS = "!?#$%&*+=<>@/\\()[]{}~^¿§¶†‡•°©®™€£¥¢∞√∫∇∀∃¬±÷≤≥≠≈≡→←↑↓↔⇒⊕⊗∅∠⊥∴♠♣♥♦★"
# Cyrillic letters that have no Latin/Greek twin among the pretraining classes
# (Г П Ф Л and the like are left out).
_CYRILLIC = "БДЖЗИЙЦЧШЩЪЫЬЭЮЯ" + "бвжзцчшщъыьэюя"

PRETRAIN_GLYPH_SET = "pretrain"
DOWNSTREAM_GLYPH_SET = "cyrillic"
GLYPH_SETS: dict[str, tuple[str, ...]] = {
    PRETRAIN_GLYPH_SET: tuple(_LATIN + _GREEK + _SYMBOLS),
    DOWNSTREAM_GLYPH_SET: tuple(_CYRILLIC),
}
GLYPH_SPLITS = ("train", "validation", "test")
_FONT_GROUPS = ("train", "validation")

# TeX fonts shipped with matplotlib use TeX encodings: only their ASCII letters are reliable.
_TEX_FONTS = {"cmb10", "cmmi10", "cmr10", "cmss10", "cmti10", "cmtt10"}
_EXCLUDED_FONT_PREFIXES = ("LastResort", "cmex10", "cmsy10")


def import_optional(module: str):
    """Import a dependency of the embedded datasets (the `data` extra), or say how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"The embedded datasets need {module.split('.')[0]!r}, which is not installed: "
            'install hf_afr with its `data` extra (`pip install -e ".[data]"` in the repository).'
        ) from None


def _check_glyph_set(glyph_set: str) -> tuple[str, ...]:
    if glyph_set not in GLYPH_SETS:
        raise ValueError(f"unknown glyph set {glyph_set!r}; expected one of {sorted(GLYPH_SETS)}")
    return GLYPH_SETS[glyph_set]


def _check_split(split: str, allowed: Sequence[str] = GLYPH_SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {list(allowed)}")
    return split


def _check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def glyph_class_names(glyph_set: str) -> list[str]:
    """Class names (the characters themselves) of ``glyph_set``, in label order."""
    return list(_check_glyph_set(glyph_set))


def _stream_seed(seed: int, *keys: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = zlib.crc32("/".join(keys).encode())
    return (int(seed) * 1_000_003 + key) % (2**63)


def _to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(img) for img in images], "label": labels.tolist()},
        features=features,
    )
