"""Numpy-only augmenters for the framework's tests: fast, deterministic, and observable (they record
every image they are handed); and a tiny Keras backbone for tests of what surrounds one."""

from __future__ import annotations

import json

import numpy as np

from automl.augment import AUGMENTERS, Augmenter, register
from automl.params import Interval


class Shift(Augmenter):
    """Each output: its source rolled by a few pixels plus seeded noise (one source per output)."""

    name = "test-shift"
    defaults = {"noise": 8.0}
    constraints = {"noise": [Interval(float, 0, closed="left")]}
    uses_sources = True
    seen: list[str] = []  # fingerprints of every source handed to generate

    def generate(self, label, indices, sources, seed):
        out = []
        for k, src in zip(indices, sources):
            Shift.seen.append(src.fingerprint)
            rng = np.random.default_rng([seed, label, k])
            image = np.roll(src.load(None).astype(float), 1 + k % 3, axis=1)
            image += rng.normal(0, self.params["noise"], image.shape)
            out.append(np.clip(image, 0, 255).astype(np.uint8))
        return out


class Blobs(Augmenter):
    """Learns each chosen class's mean image in ``fit`` (saved in work_dir, reused), generates noisy copies."""

    name = "test-blobs"
    defaults = {"size": 16, "spread": 30.0}
    fit_params = ("size",)
    fits: list[dict] = []  # one entry per fit that computed something: what it was handed

    def fit(self, train, classes, chosen, work_dir, seed, progress=True):
        self.means = {}
        for c in chosen:
            path = work_dir / f"mean-{c}.npy"
            if not path.exists():
                Blobs.fits.append({"class": c, "fingerprints": [it.fingerprint for it in train[c]],
                                   "splits": sorted({it.split for it in train[c]})})
                size = self.params["size"]
                np.save(path, np.mean([it.load(size) for it in train[c]], axis=0))
            self.means[c] = np.load(path)
        (work_dir / "fitted.json").write_text(json.dumps(sorted(self.means)))

    def generate(self, label, indices, sources, seed):
        return [np.clip(self.means[label] + np.random.default_rng([seed, label, k]).normal(
            0, self.params["spread"], self.means[label].shape), 0, 255).astype(np.uint8) for k in indices]


for _cls in (Shift, Blobs):
    if _cls.name not in AUGMENTERS:
        register(_cls)


def tiny_keras_model(self, keras, weights, size, seed):
    """``Backbone.keras_model`` for tests about the training around a backbone (pretraining's images,
    checkpoints): one strided convolution, batch norm and pooling, seeded; trains in milliseconds."""
    keras.utils.set_random_seed(int(seed))
    return keras.Sequential([keras.Input((size, size, 3)), keras.layers.Conv2D(8, 5, strides=4, name="conv"),
                             keras.layers.BatchNormalization(name="bn"),
                             keras.layers.GlobalAveragePooling2D(name="pool")], name="tiny")
