"""``resolve``: the one place a written extractor name becomes a spec.

Accepted: a built-in backbone name in any ``_``/case spelling (``Inception_V3``), ``file:PATH`` with
optional ``?scale=..&mean=..&std=..&bgr=..``, a recipe's mapping ``{file: PATH, scale, mean, std,
bgr}``, or the name of an extractor ``automl pretrain`` saved in the store. Anything else is an error
that lists the built-in and the store's names.
"""

from __future__ import annotations

import os
from typing import Any

from automl.errors import ConfigError
from automl.extractors.backbone import EXTRACTORS
from automl.extractors.files import ModelFile, is_file_name, parse_file_mapping, parse_file_name
from automl.extractors.key import ExtractorKey
from automl.extractors.pretrained import pretrained_names, pretrained_path
from automl.extractors.spec import DEFAULT_IMAGE_SIZE, Extractor, ExtractorSpec
from automl.extractors.weights import Weights


class UnknownExtractorError(ConfigError):
    """A name that is neither built in, nor ``file:``, nor in the store; ``valid`` lists the names that are."""

    def __init__(self, name: str, valid: list[str], store):
        self.name, self.valid = name, valid
        where = "built in" if store is None else f"built in, and made by `automl pretrain` in {store.extractors_dir}"
        super().__init__(f"unknown extractor {name!r}; valid names: {', '.join(valid)} ({where}), or file:PATH for a "
                         "model file.")


def resolve(name: Any, store=None, *, base_dir: str | os.PathLike | None = None) -> ExtractorSpec:
    """The spec ``name`` stands for. ``store`` (anything with an ``extractors_dir``, e.g. a
    ``automl.store.Store``; None: no store names) holds the pretrained extractors; relative model
    paths follow ``base_dir`` (None: the working directory). A model file need not exist yet: its
    key and its build check that."""
    if isinstance(name, ExtractorSpec):
        return name
    if isinstance(name, dict):
        return parse_file_mapping(name, base_dir)
    if not isinstance(name, str):
        raise ConfigError(f"an extractor is named by a string or a {{file: PATH, ...}} mapping; found {name!r}.")
    if is_file_name(name):
        return parse_file_name(name, base_dir)
    if name in EXTRACTORS:
        return EXTRACTORS.get(name)
    path = pretrained_path(store, name)
    if path is not None:
        return ModelFile(path)
    raise UnknownExtractorError(name, EXTRACTORS.names() + pretrained_names(store), store)


def extractor_key(name: Any, *, weights: Weights | str | os.PathLike | None = "imagenet",
                  image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto", seed: int = 0, store=None,
                  backend: str | None = None, gpu: bool | None = None) -> ExtractorKey:
    """``resolve(name, store).key(...)`` with the weights as a user writes them."""
    spec = resolve(name, store)
    return spec.key(weights=Weights.parse(weights), image_size=image_size, precision=precision, seed=seed,
                    backend=backend, gpu=gpu)


def build_extractor(name: Any, *, weights: Weights | str | os.PathLike | None = "imagenet",
                    image_size: int = DEFAULT_IMAGE_SIZE, precision: str = "auto", seed: int = 0,
                    store=None) -> Extractor:
    """``resolve(name, store).build(...)`` with the weights as a user writes them: "imagenet",
    "none" (random init from ``seed``) or a path.

    Raises WeightsUnavailableError, naming the file Keras looks for and where, when ImageNet weights
    are neither cached nor downloadable; never falls back to other weights.
    """
    spec = resolve(name, store)
    return spec.build(weights=Weights.parse(weights), image_size=image_size, precision=precision, seed=seed)
