"""Named random streams derived from the one seed a recipe or command takes. Imports nothing of the project.

Every consumer of randomness asks for its own stream by name instead of reusing the seed or adding
a private salt, so the streams are independent of each other (the test split does not move when
the search changes), and a stream is the same on every machine, process and Python version: the
derivation hashes the seed and the names with blake2b, never Python's ``hash()``.

Names are joined by ``:``, so ``derive(seed, "augment", 3, "order")`` is the stream
``augment:3:order``. The streams in use:

============================  ==========================================================================
``split``                     the test split held out of data without one (``data.split_test``): for
                              now the seed as given, not ``derive(seed, "split")``, so the test split
                              stays where earlier versions put it
``folds``                     the cross-validation folds of the search (``search.run_search``)
``rung:<fold>:<rows>``        the stratified subsample of ``rows`` training rows of fold ``fold`` that a
                              search's trials are first scored on (successive halving over data size)
``search:<slot>``             the Optuna sampler of a search's trial whose slot is ``slot``: the
                              lowest no trial finished, failed or running ahead of it holds (the
                              trial count before it, unless an interrupted trial freed its slot)
``head``                      every head's ``random_state``, in the search and in the refit
``augment:real``              the stratified share of real images ``real_fraction`` keeps
``augment:sampler``           which training images a Stable Diffusion fine-tune sees (``random:N``)
``augment:<label>:order``     the order in which a class's images serve as sources
``augment:<label>:<stream>:<index>``
                              per-image seeds (``augment.base.image_seed``): image ``index`` of class
                              ``label``, whatever the batching. Streams: ``generate`` (Stable Diffusion
                              outputs), ``prior`` (DreamBooth class images), ``conventional``,
                              ``dcgan``, ``pggan``; and index 0 of ``train`` / ``dcgan-train`` seeds a fit.
                              ``<label>`` is ``pretrain`` for the networks pretrained on ``pretrain_data``
                              (``dcgan-train``, and the ``dcgan`` / ``pggan`` latents of their sample grids)
``augment:<unit>:pggan-init``, ``augment:<unit>:pggan-order:<epoch>``, ``augment:<unit>:pggan-train:<step>``
                              a PGGAN fit (``automl.augment.pggan``): its initial weights, the order of the
                              images in its epoch ``epoch``, the noise (latents, gradient-penalty mixes) of
                              its step ``step`` (counted over all its phases); ``<unit>``: the class index,
                              ``<label>-cluster-<id>`` (``sampler: cluster``), ``all`` (``conditional``) or
                              ``pretrain`` (on ``pretrain_data``)
``augment:<label>:prompts``   textual inversion's choice of training prompts
``augment:<label>:clusters``  the k-means of class ``label``'s training images under ``sampler: cluster``
                              (``automl.augment.clusters``); its extractor's random weights (``weights=none``)
                              take the seed as given, as every extractor's do
``train:batches``             (under a fit's own seed) the batches Stable Diffusion training draws
``pretrain:val``              pretraining's validation split when the data has no ``val/``
``pretrain:flip``, ``pretrain:rotation``, ``pretrain:zoom``, ``pretrain:dropout``
                              pretraining's augmentation and dropout layers
``pretrain:epoch:<n>``        pretraining's shuffle of epoch ``n``
``bootstrap``                 ``compare``'s bootstrap intervals
``report:bootstrap``          the run report's bootstrap intervals over the test images
``quality:<extractor>:<class>:bootstrap``, ``quality:<extractor>:<class>:kid``
                              synthetic-image quality (``automl.quality``): the resamples of its
                              intervals, and KID's subsets; ``<class>`` a class name or ``all``
``filter:control:<fold>:<label>``
                              the random control of the selective filter (``automl.augment.filters``):
                              its draw for fold ``fold`` (``refit``: the final model) and class ``label``
``review:<label>:real``, ``review:<label>:synthetic``, ``review:order``, ``review:ids``
                              a blinded review sheet (``automl.review``): which images, their order, ids
============================  ==========================================================================

Not derived: the ``split`` above; ``compare``'s repeat ``r``, which runs with seed ``seed + r`` (the
repeat seeds are shown and recorded); and an extractor's random weights, which use the seed as given
(it is part of the embedding cache key).
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np

SEED_BITS = 31  # fits every consumer: NumPy, scikit-learn's random_state, Optuna, Keras (int32 backends too)


def stream_name(*names: str | int) -> str:
    """``names`` as the one ``:``-joined name the streams are documented by."""
    parts = []
    for name in names:
        if isinstance(name, bool):
            raise TypeError(f"a seed stream name part is a string or an integer; got {name!r}")
        if isinstance(name, str):
            if not name:
                raise ValueError("a seed stream name part must not be empty")
            parts.append(name)
        else:
            parts.append(str(operator.index(name)))  # ints, NumPy ints; not floats or bools' lookalikes
    return ":".join(parts)


def derive(seed: int, *names: str | int, bits: int = SEED_BITS) -> int:
    """The seed of stream ``names`` under ``seed``: an integer in ``[0, 2**bits)``."""
    if not 1 <= bits <= 256:
        raise ValueError(f"bits must be in [1, 256]; got {bits}")
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"a seed must be >= 0; got {seed}")
    size = (bits + 7) // 8
    digest = hashlib.blake2b(f"{seed}/{stream_name(*names)}".encode(), digest_size=max(size, 8)).digest()
    return int.from_bytes(digest, "little") >> (8 * max(size, 8) - bits)


def rng(seed: int, *names: str | int) -> np.random.Generator:
    """A NumPy generator for stream ``names`` under ``seed`` (seeded with 128 bits of it)."""
    return np.random.default_rng(derive(seed, *names, bits=128))
