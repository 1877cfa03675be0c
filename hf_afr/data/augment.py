"""Batched random augmentation of glyph masters (affine, elastic warp, stroke width, blur,
contrast, noise) with tensor ops, which makes generating many images cheap."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .glyph_sets import _check_generator, _check_positive_int


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
