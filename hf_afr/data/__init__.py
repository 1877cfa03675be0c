"""Datasets of hf_afr: rendered glyphs (pretraining and downstream) and handwritten digits."""

from hf_afr.data.glyphs import (
    DOWNSTREAM_GLYPH_SET,
    GLYPH_SETS,
    GLYPH_SPLITS,
    PRETRAIN_GLYPH_SET,
    FontInfo,
    GlyphBank,
    augment_glyphs,
    digits_arrays,
    digits_dataset,
    glyph_arrays,
    glyph_class_names,
    glyph_dataset,
    list_fonts,
)

__all__ = [
    "DOWNSTREAM_GLYPH_SET",
    "GLYPH_SETS",
    "GLYPH_SPLITS",
    "PRETRAIN_GLYPH_SET",
    "FontInfo",
    "GlyphBank",
    "augment_glyphs",
    "digits_arrays",
    "digits_dataset",
    "glyph_arrays",
    "glyph_class_names",
    "glyph_dataset",
    "list_fonts",
]
