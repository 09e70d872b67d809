"""Synthetic shapes for segmentation: images with their binary masks, reproducible from a seed.

Each image holds 1-3 filled circles, rectangles or triangles on a background with a random brightness
gradient and noise. Shape and background intensities overlap on purpose, so a fixed threshold on pixel
intensity cannot segment them and a model has to use local structure (edges, filled regions).
"""

from __future__ import annotations

import numpy as np


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 1, size, size) float32 in [0, 1], masks (N, 1, size, size) uint8 in {0, 1}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (size, size) coordinates in [0, 1)
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        gradient = np.cos(angle) * xx + np.sin(angle) * yy  # a lighting ramp in a random direction
        background = rng.uniform(0.05, 0.25) + rng.uniform(0.2, 0.45) * (gradient - gradient.min())
        mask = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            mask |= _shape(rng, xx, yy)
        fill = rng.uniform(0.45, 0.8)
        image = np.where(mask, fill, background) + rng.normal(0, 0.06, (size, size))
        images[i, 0] = np.clip(image, 0, 1)
        masks[i, 0] = mask
    return images, masks


def _shape(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    cx, cy = rng.uniform(0.2, 0.8, 2)
    r = rng.uniform(0.08, 0.2)
    kind = rng.integers(3)
    if kind == 0:  # circle
        return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    if kind == 1:  # axis-aligned rectangle
        w, h = rng.uniform(0.6, 1.4, 2) * r
        return (abs(xx - cx) < w) & (abs(yy - cy) < h)
    # triangle: below two rising edges and above a base line
    return (yy - cy < r) & (yy - cy > -r + 2 * abs(xx - cx))
