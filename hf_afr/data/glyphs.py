"""Deterministic rendered-glyph datasets and the handwritten-digits downstream task.

Glyphs are rendered with PIL from TrueType fonts. By default only the fonts shipped with
matplotlib are used, so every result can be reproduced on any machine with matplotlib installed;
fonts under ``/usr/share/fonts`` can be added with ``include_system_fonts=True``.

Rendering happens once per (font, character) into a clean "master" bitmap (white ink on black,
baseline at a fixed height, glyph centred horizontally, cap height normalised across fonts).
Random augmentation (affine, elastic warp, stroke width, blur, contrast, noise) is then applied in
batches with tensor ops, which makes generating hundreds of thousands of images cheap.

Glyph sets
    ``"pretrain"``: Latin upper/lower case, Greek letters that do not look like Latin ones and
    math/punctuation symbols (the pretraining classes; no Arabic digits, no Cyrillic).
    ``"cyrillic"``: Cyrillic letters whose shapes do not occur among the pretraining classes
    (a downstream task with classes disjoint from pretraining).

Font splits
    Fonts are split deterministically by design: monospaced (typewriter) typefaces are held out
    for ``"validation"``/``"test"``, proportional typefaces are used for ``"train"``.
"""

from __future__ import annotations

import functools
import glob
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

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

# --------------------------------------------------------------------------------------------
# Glyph sets
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


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
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as tt:
        return frozenset((tt.getBestCmap() or {}).keys())


@functools.lru_cache(maxsize=4)
def _all_fonts(include_system_fonts: bool) -> tuple[FontInfo, ...]:
    from fontTools.ttLib import TTFont

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


# --------------------------------------------------------------------------------------------
# Batched augmentation
# --------------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def augment_glyphs(
    masters: torch.Tensor,
    generator: torch.Generator,
    image_size: int = 32,
    strength: float = 1.0,
) -> torch.Tensor:
    """Randomly augment clean glyph masters and resample them to ``image_size``.

    Args:
        masters: ``uint8`` or float tensor ``[B, R, R]`` or ``[B, 1, R, R]`` (white ink on black).
        generator: source of randomness; the same generator state gives the same pixels.
        image_size: output side length.
        strength: scale of the random perturbations; ``0`` only resamples the clean masters.

    Returns:
        ``uint8`` tensor ``[B, image_size, image_size]``.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    _check_generator(generator)
    image_size = _check_positive_int("image_size", image_size, 4)
    x = masters.unsqueeze(1) if masters.dim() == 3 else masters
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(
            f"masters must have shape [B, R, R] or [B, 1, R, R], got {tuple(masters.shape)}"
        )
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    n = x.shape[0]
    s = float(strength)
    out = 2 * image_size  # resample at twice the size, then average-pool (anti-aliasing)

    if s > 0:
        # Stroke width: erode / keep / dilate at master resolution.
        stroke = torch.rand(n, generator=generator).view(n, 1, 1, 1)
        dilated = F.max_pool2d(x, 3, 1, 1)
        eroded = -F.max_pool2d(-x, 3, 1, 1)
        x = torch.where(stroke < 0.1 * min(s, 1.0), eroded, x)
        x = torch.where(stroke > 1 - 0.3 * min(s, 1.0), dilated, x)

    # Affine transform (output -> input coordinates, normalised to [-1, 1]).
    angle = _uniform(generator, n, -12.0, 12.0) * s * torch.pi / 180
    log_scale = _uniform(generator, n, np.log(0.8), np.log(1.25)) * s
    log_aspect = _uniform(generator, n, -0.12, 0.12) * s
    shear = _uniform(generator, n, -0.25, 0.25) * s
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.12 * s
    sx = torch.exp(log_scale + log_aspect)
    sy = torch.exp(log_scale - log_aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward = rotation @ shear @ diag(sx, sy)
    fwd = torch.stack(
        [
            torch.stack([cos * sx, (cos * shear - sin) * sy], -1),
            torch.stack([sin * sx, (sin * shear + cos) * sy], -1),
        ],
        -2,
    )
    inv = torch.linalg.inv(fwd)
    theta = torch.cat([inv, -(inv @ shift.unsqueeze(-1))], -1)
    grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)
    if s > 0:
        # Smooth elastic warp: coarse random displacements, bicubically upsampled.
        amp = _uniform(generator, n, 0.0, 0.05 * s).view(n, 1, 1, 1)
        coarse = torch.randn(n, 2, 4, 4, generator=generator) * amp
        warp = F.interpolate(coarse, size=(out, out), mode="bicubic", align_corners=False)
        grid = grid + warp.permute(0, 2, 3, 1)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.avg_pool2d(y, 2)

    if s > 0:
        # Blur, contrast and sensor noise; polarity stays white-on-black.
        blur = _uniform(generator, n, 0.0, 0.6 * min(s, 1.0)).view(n, 1, 1, 1)
        y = torch.lerp(y, F.avg_pool2d(y, 3, 1, 1, count_include_pad=False), blur)
        y = y / y.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        fg = _uniform(generator, n, 1.0 - 0.3 * min(s, 1.0), 1.0).view(n, 1, 1, 1)
        bg = _uniform(generator, n, 0.0, 0.2 * min(s, 1.0)).view(n, 1, 1, 1)
        y = bg + (fg - bg) * y
        sigma = _uniform(generator, n, 0.0, 0.06 * min(s, 1.0)).view(n, 1, 1, 1)
        y = y + sigma * torch.randn(y.shape, generator=generator)
    return (y.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0]


# --------------------------------------------------------------------------------------------
# Glyph banks: clean masters of one glyph set in one font group
# --------------------------------------------------------------------------------------------


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


def _stream_seed(seed: int, *keys: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = zlib.crc32("/".join(keys).encode())
    return (int(seed) * 1_000_003 + key) % (2**63)


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


def _to_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(img) for img in images], "label": labels.tolist()},
        features=features,
    )


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

DIGIT_SPLITS = ("train", "test")


def digits_arrays(
    split: str, image_size: int = 32, seed: int = 0, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten 8x8 digits upsampled to ``(uint8 [N, S, S, 3], int64 labels [N])``.

    The 1797 images of :func:`sklearn.datasets.load_digits` are split with a stratified,
    seeded ``train``/``test`` split (``test_fraction`` of each class goes to ``test``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

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
