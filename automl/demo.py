"""A small synthetic image dataset the project makes itself, for the offline demo and the tests.

Two classes that a frozen CNN can tell apart only from texture and shape, not from a constant
colour: "rings" (a bright annulus) and "blobs" (a filled Gaussian spot), each with random position,
size, contrast and noise. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("blobs", "rings")


def make_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    r = rng.uniform(0.15, 0.3) * size
    d = np.hypot(yy - cy, xx - cx)
    if kind == "rings":
        signal = np.exp(-((d - r) ** 2) / (2 * (0.06 * size) ** 2))
    else:
        signal = np.exp(-(d ** 2) / (2 * (0.6 * r) ** 2))
    img = rng.uniform(0.1, 0.3) + rng.uniform(0.4, 0.7) * signal + rng.normal(0, 0.08, (size, size))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_demo_dataset(folder: str | Path, *, per_class: int = 60, size: int = 64, seed: int = 0,
                      test_fraction: float = 0.25) -> Path:
    """Write ``folder/{train,test}/{blobs,rings}/*.png`` (grayscale PNG) and return ``folder``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    n_test = int(round(per_class * test_fraction))
    for kind in CLASSES:
        for i in range(per_class):
            split = "test" if i < n_test else "train"
            out = folder / split / kind
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(make_image(kind, size, rng)).save(out / f"{kind}_{i:03d}.png")
    return folder
