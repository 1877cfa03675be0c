"""Typefaces: a fine-grained task, which of 20 typefaces drew a Latin letter.

The 20 classes are typefaces (family + style) bundled with matplotlib, so the pixels are the
same on any machine with matplotlib: the four styles of DejaVu Sans, DejaVu Sans Mono, DejaVu
Serif and STIXGeneral, and the Computer Modern faces cmr10, cmss10, cmti10 and cmtt10. Close
pairs (a face and its oblique, bold or mono twin) make the task fine-grained, like the paper's
car models or aircraft variants.

The glyph drawn is random and carries no label. The 52 Latin letters are split once, by a
fixed permutation, into 40 training letters and 12 held-out letters: `"train"` draws only
training letters, `"validation"` and `"test"` only held-out letters (independent random
streams), so accuracy measures recognising a typeface on letters never seen in it. Renders are
mildly augmented (`strength` scales `augment_glyphs`; the default 0.2 keeps slant and stroke
weight, the cues that separate the styles, mostly intact).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .augment import augment_glyphs
from .fonts import _notdef_image, _render_master, list_fonts
from .glyph_sets import (
    _LATIN,
    GLYPH_SPLITS,
    _check_positive_int,
    _check_split,
    _stream_seed,
    _to_dataset,
)

TYPEFACES: tuple[tuple[str, str], ...] = tuple(
    [(family, style) for family in ("DejaVu Sans", "DejaVu Sans Mono") for style in
     ("Book", "Oblique", "Bold", "Bold Oblique")]
    + [("DejaVu Serif", style) for style in ("Book", "Italic", "Bold", "Bold Italic")]
    + [("STIXGeneral", style) for style in ("Regular", "Italic", "Bold", "Bold Italic")]
    + [(family, "Regular") for family in ("cmr10", "cmss10", "cmti10", "cmtt10")]
)  # fmt: skip

_PERMUTED_LETTERS = "".join(np.random.default_rng(20240).permutation(list(_LATIN)))
TYPEFACE_TRAIN_LETTERS = "".join(sorted(_PERMUTED_LETTERS[:40]))
TYPEFACE_HELD_OUT_LETTERS = "".join(sorted(_PERMUTED_LETTERS[40:]))


def typeface_class_names() -> list[str]:
    """Class names ("DejaVu Sans Book", ...), in label order."""
    return [f"{family} {style}" for family, style in TYPEFACES]


def typeface_letters(split: str) -> str:
    """The letters a split draws: the 40 training letters, or the 12 held-out ones."""
    _check_split(split, GLYPH_SPLITS)
    return TYPEFACE_TRAIN_LETTERS if split == "train" else TYPEFACE_HELD_OUT_LETTERS


@functools.lru_cache(maxsize=4)
def _typeface_masters(letters: str, size: int) -> torch.Tensor:
    """uint8 [num_typefaces, len(letters), size, size] clean masters."""
    by_name = {(f.family, f.style): f for f in list_fonts()}
    missing = [f"{family} {style}" for family, style in TYPEFACES if (family, style) not in by_name]
    if missing:
        raise ValueError(
            f"The typefaces task needs matplotlib's bundled fonts, but {missing} are not found; "
            "install a matplotlib that ships the DejaVu, STIX and Computer Modern fonts."
        )
    masters = np.zeros((len(TYPEFACES), len(letters), size, size), dtype=np.uint8)
    for t, key in enumerate(TYPEFACES):
        path = by_name[key].path
        notdef = _notdef_image(path, size)
        for c, letter in enumerate(letters):
            img = _render_master(path, letter, size, notdef)
            if img is None:
                raise ValueError(f"The font {key} cannot draw {letter!r}.")
            masters[t, c] = img
    return torch.from_numpy(masters)


def typeface_arrays(
    split: str,
    samples_per_class: int,
    image_size: int = 32,
    seed: int = 0,
    strength: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Rendered letters labelled by typeface: ``(uint8 [N, S, S, 3], int64 labels [N])``.

    Labels cycle through the 20 typefaces, so every prefix of length ``k * 20`` is balanced;
    each image's letter is drawn uniformly from the split's letters. Identical arguments give
    identical pixels.

    Args:
        split: ``"train"`` (training letters), ``"validation"`` or ``"test"`` (held-out
            letters, independent random streams).
        samples_per_class: images per typeface.
        image_size: side length of the RGB images.
        seed: random seed.
        strength: augmentation strength (see `augment_glyphs`); 0 gives clean renders.
    """
    letters = typeface_letters(split)
    samples_per_class = _check_positive_int("samples_per_class", samples_per_class)
    image_size = _check_positive_int("image_size", image_size, 4)
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    masters = _typeface_masters(letters, max(64, 2 * image_size))
    gen = torch.Generator().manual_seed(_stream_seed(seed, "typefaces", split))
    labels = torch.arange(len(TYPEFACES)).repeat(samples_per_class)
    chars = torch.randint(len(letters), (len(labels),), generator=gen)
    images = augment_glyphs(masters[labels, chars], gen, image_size, strength)
    rgb = images.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()
    return rgb, labels.numpy()


def typeface_dataset(
    split: str,
    samples_per_class: int,
    image_size: int = 32,
    seed: int = 0,
    strength: float = 0.2,
):
    """`typeface_arrays` as a :class:`datasets.Dataset` with ``image`` and ``label`` columns."""
    images, labels = typeface_arrays(split, samples_per_class, image_size, seed, strength)
    return _to_dataset(images, labels, typeface_class_names())
