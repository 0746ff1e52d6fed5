"""The offline demo dataset: scikit-learn's bundled handwritten digits, written as image folders.

Real images (1,797 scans of handwritten digits, 8x8 pixels, 16 grey levels; BSD-licensed with
scikit-learn), so the demo needs no download and shows a real search on real pixels. Upscaled so
the backbones see strokes rather than single pixels. Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_demo_dataset(folder: str | Path, *, per_class: int = 40, size: int = 32, classes: int = 10,
                      seed: int = 0, test_fraction: float = 0.25) -> Path:
    """Write ``folder/{train,test}/<digit>/*.png`` with ``per_class`` images of each of the first
    ``classes`` digits, a stratified ``test_fraction`` of them under test/; returns ``folder``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for digit in range(classes):
        idx = rng.permutation(np.flatnonzero(digits.target == digit))[:per_class]
        n_test = int(round(len(idx) * test_fraction))
        for rank, i in enumerate(idx):
            split = "test" if rank < n_test else "train"
            out = folder / split / str(digit)
            out.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(out / f"{digit}_{i:04d}.png")
    return folder
