"""Datasets of hf_afr: rendered glyphs (pretraining and downstream) and handwritten digits."""

from .augment import augment_glyphs
from .digits import digits_arrays, digits_dataset
from .fonts import FontInfo, list_fonts
from .glyph_sets import (
    DOWNSTREAM_GLYPH_SET,
    GLYPH_SETS,
    GLYPH_SPLITS,
    PRETRAIN_GLYPH_SET,
    glyph_class_names,
)
from .glyphs import GlyphBank, glyph_arrays, glyph_dataset
from .typefaces import TYPEFACES, typeface_arrays, typeface_class_names, typeface_dataset

__all__ = [
    "DOWNSTREAM_GLYPH_SET",
    "GLYPH_SETS",
    "GLYPH_SPLITS",
    "PRETRAIN_GLYPH_SET",
    "TYPEFACES",
    "FontInfo",
    "GlyphBank",
    "augment_glyphs",
    "digits_arrays",
    "digits_dataset",
    "glyph_arrays",
    "glyph_class_names",
    "glyph_dataset",
    "list_fonts",
    "typeface_arrays",
    "typeface_class_names",
    "typeface_dataset",
]
