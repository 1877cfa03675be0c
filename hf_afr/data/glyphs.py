"""Rendered-glyph datasets: banks of clean masters and augmented samples drawn from them."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .augment import augment_glyphs
from .fonts import FontInfo, _font_group, _font_supports, _notdef_image, _render_master, list_fonts
from .glyph_sets import (
    GLYPH_SETS,
    _check_generator,
    _check_glyph_set,
    _check_positive_int,
    _check_split,
    _stream_seed,
    _to_dataset,
    glyph_class_names,
)


class GlyphBank:
    """Clean master bitmaps of every (font, class) pair of a glyph set in one font group.

    Build it with :meth:`build` and draw augmented batches with :meth:`sample`; this is the fast
    path for training loops (no PIL in the loop).
    """

    def __init__(
        self,
        masters: torch.Tensor,
        labels: torch.Tensor,
        font_ids: torch.Tensor,
        class_names: list[str],
        fonts: list[FontInfo],
    ) -> None:
        self.masters = masters
        self.labels = labels
        self.font_ids = font_ids
        self.class_names = class_names
        self.fonts = fonts
        counts = torch.bincount(labels, minlength=len(class_names))
        missing = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if missing:
            raise ValueError(f"no font renders the classes {missing}")
        self._counts = counts
        table = torch.zeros(len(class_names), int(counts.max()), dtype=torch.long)
        for c in range(len(class_names)):
            table[c, : counts[c]] = torch.nonzero(labels == c).flatten()
        self._table = table

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def master_size(self) -> int:
        return int(self.masters.shape[-1])

    def __len__(self) -> int:
        return int(self.masters.shape[0])

    @classmethod
    def build(
        cls,
        glyph_set: str,
        split: str,
        master_size: int = 64,
        include_system_fonts: bool = False,
    ) -> GlyphBank:
        """Render (or fetch from the in-process cache) the masters of ``glyph_set``/``split``."""
        _check_glyph_set(glyph_set)
        _check_split(split)
        master_size = _check_positive_int("master_size", master_size, 8)
        return _build_bank(glyph_set, _font_group(split), master_size, bool(include_system_fonts))

    def sample(
        self,
        n: int,
        generator: torch.Generator,
        image_size: int = 32,
        strength: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` augmented images: ``(uint8 [n, S, S], int64 labels [n])``.

        Classes are drawn uniformly (or taken from ``labels``), then a random font that has the
        class, then random augmentation.
        """
        n = _check_positive_int("n", n)
        _check_generator(generator)
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator)
        else:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"labels must be {n} class ids in [0, {self.num_classes})")
        pick = (torch.rand(n, generator=generator) * self._counts[labels]).long()
        idx = self._table[labels, pick.clamp_max(self._counts[labels] - 1)]
        images = augment_glyphs(self.masters[idx], generator, image_size, strength)
        return images, labels


@functools.lru_cache(maxsize=8)
def _build_bank(glyph_set: str, group: str, size: int, include_system_fonts: bool) -> GlyphBank:
    chars = GLYPH_SETS[glyph_set]
    fonts = list_fonts(group, include_system_fonts)
    masters, labels, font_ids = [], [], []
    for fi, font in enumerate(fonts):
        notdef = _notdef_image(font.path, size)
        for label, char in enumerate(chars):
            if not _font_supports(font, char):
                continue
            img = _render_master(font.path, char, size, notdef)
            if img is None:
                continue
            masters.append(img)
            labels.append(label)
            font_ids.append(fi)
    return GlyphBank(
        torch.from_numpy(np.stack(masters)),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(font_ids, dtype=torch.long),
        list(chars),
        fonts,
    )


# --------------------------------------------------------------------------------------------
# Public array / Dataset builders
# --------------------------------------------------------------------------------------------


def glyph_arrays(
    glyph_set: str,
    split: str,
    samples_per_class: int,
    image_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    include_system_fonts: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Fast path: rendered glyphs as arrays ``(uint8 [N, S, S, 3], int64 labels [N])``.

    Labels cycle through the classes (``0, 1, ..., C-1, 0, 1, ...``), so every prefix of length
    ``k * C`` is balanced. The same arguments always give identical pixels.
    """
    _check_glyph_set(glyph_set)
    _check_split(split)
    samples_per_class = _check_positive_int("samples_per_class", samples_per_class)
    image_size = _check_positive_int("image_size", image_size, 4)
    bank = GlyphBank.build(glyph_set, split, max(64, 2 * image_size), include_system_fonts)
    gen = torch.Generator().manual_seed(_stream_seed(seed, glyph_set, split))
    labels = torch.arange(bank.num_classes).repeat(samples_per_class)
    chunks = []
    for start in range(0, len(labels), 4096):
        part = labels[start : start + 4096]
        images, _ = bank.sample(len(part), gen, image_size, 1.0 if augment else 0.0, part)
        chunks.append(images)
    images = torch.cat(chunks)
    rgb = images.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()
    return rgb, labels.numpy()


def glyph_dataset(
    glyph_set: str,
    split: str,
    samples_per_class: int,
    image_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    include_system_fonts: bool = False,
):
    """Rendered glyphs as a :class:`datasets.Dataset` with ``image`` and ``label`` columns.

    Args:
        glyph_set: ``"pretrain"`` or ``"cyrillic"`` (see :data:`GLYPH_SETS`).
        split: ``"train"`` (proportional fonts), ``"validation"`` or ``"test"`` (held-out
            monospaced fonts, independent random streams).
        samples_per_class: images per class.
        image_size: side length of the RGB images.
        seed: random seed; identical arguments give identical pixels.
        augment: apply random augmentation (``False`` gives clean, centred renderings).
        include_system_fonts: also use fonts from ``/usr/share/fonts`` (not reproducible across
            machines).
    """
    images, labels = glyph_arrays(
        glyph_set, split, samples_per_class, image_size, seed, augment, include_system_fonts
    )
    return _to_dataset(images, labels, glyph_class_names(glyph_set))


# --------------------------------------------------------------------------------------------
# Handwritten digits (scikit-learn's bundled copy of the UCI optical digits test set)
# --------------------------------------------------------------------------------------------
