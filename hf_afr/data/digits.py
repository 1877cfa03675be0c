"""Handwritten digits: scikit-learn's bundled copy of the UCI optical digits test set."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .glyph_sets import (
    _check_positive_int,
    _check_split,
    _stream_seed,
    _to_dataset,
    import_optional,
)

DIGIT_SPLITS = ("train", "test")


def digits_arrays(
    split: str, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten 8x8 digits upsampled to ``(uint8 [N, S, S, 3], int64 labels [N])``.

    The 1797 images of :func:`sklearn.datasets.load_digits` are split with a stratified,
    seeded ``train``/``test`` split (``test_fraction`` of each class goes to ``test``).
    """
    load_digits = import_optional("sklearn.datasets").load_digits
    train_test_split = import_optional("sklearn.model_selection").train_test_split

    _check_split(split, DIGIT_SPLITS)
    image_size = _check_positive_int("image_size", image_size, 8)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        idx,
        test_size=test_fraction,
        stratify=digits.target,
        random_state=_stream_seed(seed, "digits") % (2**32),
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    gray = torch.from_numpy(digits.images[idx] / 16.0).float().unsqueeze(1)
    up = F.interpolate(gray, size=(image_size, image_size), mode="bicubic", align_corners=False)
    up = (up.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0]
    rgb = up.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()
    return rgb, digits.target[idx].astype(np.int64)


def digits_dataset(split: str, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2):
    """Handwritten digits as a :class:`datasets.Dataset` (``image``, ``label`` "0".."9")."""
    images, labels = digits_arrays(split, image_size, seed, test_fraction)
    return _to_dataset(images, labels, [str(d) for d in range(10)])
