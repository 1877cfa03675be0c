"""Font discovery and the rendering of clean glyph "masters".

Glyphs are rendered with PIL from TrueType fonts. By default only the fonts shipped with
matplotlib are used, so every result can be reproduced on any machine with matplotlib installed;
fonts under ``/usr/share/fonts`` can be added with ``include_system_fonts=True``.

Rendering happens once per (font, character) into a clean master bitmap (white ink on black,
baseline at a fixed height, glyph centred horizontally, cap height normalised across fonts).

Fonts are split deterministically by design: monospaced (typewriter) typefaces are held out
for ``"validation"``/``"test"``, proportional typefaces are used for ``"train"``.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .glyph_sets import _FONT_GROUPS, _LATIN, _check_split, import_optional

# TeX fonts shipped with matplotlib use TeX encodings: only their ASCII letters are reliable.
_TEX_FONTS = {"cmb10", "cmmi10", "cmr10", "cmss10", "cmti10", "cmtt10"}
_EXCLUDED_FONT_PREFIXES = ("LastResort", "cmex10", "cmsy10")


@dataclass(frozen=True)
class FontInfo:
    """A font file with its names, its origin and the split group it belongs to."""

    path: str
    family: str
    style: str
    source: str  # "matplotlib" or "system"
    group: str  # "train" or "validation"
    monospaced: bool

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


def _matplotlib_font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _is_monospaced(tt) -> bool:
    if tt["post"].isFixedPitch:
        return True
    cmap = tt.getBestCmap() or {}
    hmtx = tt["hmtx"]
    widths = {hmtx[cmap[ord(c)]][0] for c in "ilmMW" if ord(c) in cmap}
    return len(widths) == 1


@functools.cache
def _font_cmap(path: str) -> frozenset[int]:
    TTFont = import_optional("fontTools.ttLib").TTFont

    with TTFont(path, lazy=True) as tt:
        return frozenset((tt.getBestCmap() or {}).keys())


@functools.lru_cache(maxsize=4)
def _all_fonts(include_system_fonts: bool) -> tuple[FontInfo, ...]:
    TTFont = import_optional("fontTools.ttLib").TTFont

    sources = [("matplotlib", sorted(glob.glob(os.path.join(_matplotlib_font_dir(), "*.ttf"))))]
    if include_system_fonts:
        system = glob.glob("/usr/share/fonts/**/*.[ot]tf", recursive=True)
        sources.append(("system", sorted(system)))
    fonts: list[FontInfo] = []
    seen: set[tuple[str, str]] = set()
    for source, paths in sources:
        for path in paths:
            if os.path.basename(path).startswith(_EXCLUDED_FONT_PREFIXES):
                continue
            try:
                with TTFont(path, lazy=True) as tt:
                    family = str(tt["name"].getDebugName(1))
                    style = str(tt["name"].getDebugName(2))
                    cmap = tt.getBestCmap() or {}
                    if not all(ord(c) in cmap for c in _LATIN):
                        continue  # symbol-only or display subset fonts
                    mono = _is_monospaced(tt)
            except Exception:  # noqa: BLE001 - unreadable font files are skipped
                continue
            if (family, style) in seen:
                continue
            seen.add((family, style))
            group = "validation" if mono else "train"
            fonts.append(FontInfo(path, family, style, source, group, mono))
    return tuple(fonts)


def list_fonts(group: str | None = None, include_system_fonts: bool = False) -> list[FontInfo]:
    """Usable fonts, optionally only those of one group (``"train"`` or ``"validation"``).

    Monospaced typefaces form the held-out ``"validation"`` group; the ``"test"`` split of the
    datasets renders from the same held-out fonts with an independent random stream.
    """
    if group is not None:
        _check_split(group, _FONT_GROUPS)
    fonts = _all_fonts(bool(include_system_fonts))
    return [f for f in fonts if group is None or f.group == group]


def _font_group(split: str) -> str:
    return "train" if split == "train" else "validation"


# --------------------------------------------------------------------------------------------
# Rendering of clean master bitmaps
# --------------------------------------------------------------------------------------------

_CAP_HEIGHT = 0.55  # fraction of the canvas height taken by capital letters
_BASELINE = 0.75  # baseline position, fraction of the canvas height from the top
_MAX_EXTENT = 0.94  # glyphs larger than this fraction of the canvas are shrunk


def _render_on(font: ImageFont.FreeTypeFont, char: str, size: int) -> Image.Image:
    canvas = Image.new("L", (3 * size, 3 * size), 0)
    ImageDraw.Draw(canvas).text(
        (1.5 * size, 1.5 * size + (_BASELINE - 0.5) * size),
        char,
        font=font,
        fill=255,
        anchor="ms",
    )
    return canvas


def _render_master(path: str, char: str, size: int, notdef: np.ndarray | None) -> np.ndarray | None:
    """Render ``char`` on a ``size`` x ``size`` canvas, or ``None`` if the font lacks it."""
    font = _sized_font(path, size)
    big = _render_on(font, char, size)
    bbox = big.getbbox()
    if bbox is None:
        return None
    if notdef is not None and np.array_equal(np.asarray(big), notdef):
        return None  # the font drew its .notdef box
    x0, y0, x1, y1 = bbox
    limit = _MAX_EXTENT * size
    if x1 - x0 > limit or y1 - y0 > limit:
        shrink = limit / max(x1 - x0, y1 - y0)
        font = _sized_font(path, size, shrink)
        big = _render_on(font, char, size)
        x0, y0, x1, y1 = big.getbbox()
    # Canvas window: glyph centred horizontally, baseline fixed unless the ink would be clipped.
    left = int(round((x0 + x1) / 2 - size / 2))
    top = size  # the baseline sits at top + _BASELINE * size by construction
    margin = int((1 - _MAX_EXTENT) / 2 * size)
    top = min(top, y0 - margin)  # keep tall glyphs inside the window ...
    top = max(top, y1 + margin - size)  # ... and deep descenders too
    return np.asarray(big.crop((left, top, left + size, top + size)), dtype=np.uint8)


@functools.lru_cache(maxsize=256)
def _sized_font(path: str, size: int, shrink: float = 1.0) -> ImageFont.FreeTypeFont:
    ref = ImageFont.truetype(path, 200)
    probe = Image.new("L", (400, 400), 0)
    ImageDraw.Draw(probe).text((100, 300), "H", font=ref, fill=255, anchor="ls")
    _, y0, _, y1 = probe.getbbox()
    pixels = 200 * _CAP_HEIGHT * size / (y1 - y0) * shrink
    return ImageFont.truetype(path, max(4, int(round(pixels))))


def _notdef_image(path: str, size: int) -> np.ndarray:
    return np.asarray(_render_on(_sized_font(path, size), "\U0010fffd", size))


def _font_supports(font: FontInfo, char: str) -> bool:
    if ord(char) not in _font_cmap(font.path):
        return False
    return not (font.family in _TEX_FONTS and char not in _LATIN)
