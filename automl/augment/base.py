"""What every augmenter is, and the registry the CLI and recipes name them by.

An augmenter turns training images into new, labelled training images. The framework
(``automl.augment.generate``) decides how many images of which class, hands the augmenter the
training split only, caches every output in the store, and records where each came from; an
augmenter only has to ``fit`` (when it learns something) and ``generate``.

Contract, kept by every augmenter so that caching and resumption are correct:

- ``defaults`` lists every parameter with its default; ``__init__`` refuses any other name (the
  error lists the valid ones), checks each value's type against its default's, then the
  ``constraints`` (parameter -> accepted ``automl.params`` constraints), then ``check`` (what a
  constraint cannot say, such as two parameters together).
- ``fit_params`` names the parameters that change what ``fit`` learns; ``later_params`` those added
  after the augmenter's first release, left out of the cache keys at their defaults (so a store's
  images and generators made before them are reused). The fitted state lives in the ``work_dir`` it
  is handed, which is keyed by (augmenter, those parameters, the training images'
  fingerprints, seed): a second run with the same key must reuse what it finds there instead of
  training again; a killed fit may leave a partial checkpoint there, which the next fit resumes or
  discards, never mistakes for a finished one.
- ``generate(label, indices, sources, seed)`` returns one uint8 RGB image (H, W, 3) per index, in
  order. Image ``i`` must depend only on the fitted state, the parameters, ``seed``, ``label``,
  ``indices[i]`` and ``sources[i]`` — not on how the indices were batched — so the framework can
  make images 0..9 today, 10..19 tomorrow, and get the same set as making 0..19 at once.
- ``uses_sources = True``: each output is made from one training image (``sources[i]``, an
  ``automl.data.Item``); the framework picks it and records it as the output's source, and the
  search keeps the output on its source's side of every fold. Otherwise ``sources`` holds ``None``.
- ``provenance(label, indices)``, optional: an augmenter that knows better than the framework which
  training images each output came from (``folder``: a CSV, or the nearest real image) returns, per
  index, a dict whose ``sources`` lists those ``Item``s (any number, of any class; training split
  only); the framework records them, and the search keeps the output on their side of every fold,
  as above. Its other keys (JSON values) go into the output's provenance record beside the
  framework's own. Called after ``generate`` with the same label and indices; like ``generate``, it
  must not depend on the batching. The default (None) leaves the sources to the framework.
- ``skip_bad`` is set by the pipeline from the recipe (``--skip-bad``) before ``fit``: an augmenter
  that reads files of its own leaves the unusable ones out, naming them, instead of refusing them.
  It is no part of the cache key, so it must not change the images when every file is usable (and
  when one is not, refusing makes none).
- Heavy packages (torch, diffusers) are imported inside methods; ``requires`` names them so a
  missing one fails before any work with the install command.

An augmenter is one module of ``automl.augment`` with ``@register`` above its class: ``AUGMENTERS``
imports every module of the package at its first lookup, so adding one is adding its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from automl import seeds
from automl.errors import ConfigError
from automl.params import check_params
from automl.registry import Registry


class Augmenter:
    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    constraints: ClassVar[dict[str, list]] = {}
    fit_params: ClassVar[tuple[str, ...]] = ()
    uses_sources: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    # Short text for `automl augmenters` and error messages.
    summary: ClassVar[str] = ""
    skip_bad: bool = False  # the recipe's skip_bad (set by the pipeline): leave unusable input files out
    # Parameters added after the augmenter was first released: at their defaults they are left out of
    # the cache keys (``key_params``, ``fit_signature``), so images and generators made before they
    # existed keep their keys and are reused.
    later_params: ClassVar[tuple[str, ...]] = ()
    # Parameters that name files or folders: in a recipe file, relative ones follow the recipe's folder.
    path_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "(none)"
            raise ConfigError(f"augmenter {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                              f"valid parameters: {valid}.")
        merged = dict(self.defaults)
        for key, value in params.items():
            merged[key] = _check_type(self.name, key, value, self.defaults[key])
        self.params = check_params(f"augmenter {self.name!r}", merged, self.constraints)
        self.check()

    def check(self) -> None:
        """Beyond ``constraints``: raise ``ConfigError`` naming the parameter, what it must be and the
        value found (``automl.params.param_error``)."""

    def preflight(self) -> None:
        """Check in seconds that ``fit`` and ``generate`` can run (e.g. the weights are reachable),
        raising the error they would raise; called before a fit spends any time on its baseline."""

    def check_plan(self, counts: Mapping[str, int], sizes: Mapping[str, int]) -> None:
        """Optional: refuse, before any work, a plan this augmenter cannot make: ``counts`` maps each
        chosen class's name to the images to make, ``sizes`` to its real training images."""

    def fit(self, train: Mapping[int, Sequence], classes: Sequence[str], chosen: Sequence[int], work_dir: Path,
            seed: int, progress: bool = True) -> None:
        """Learn from ``train`` (class index -> training ``Item``s; the test split is never in it)
        whatever ``generate`` needs for the ``chosen`` classes, keeping it under ``work_dir``."""

    def generate(self, label: int, indices: Sequence[int], sources: Sequence, seed: int) -> list[np.ndarray]:
        """One uint8 RGB image per index of class ``label`` (see the module docstring)."""
        raise NotImplementedError

    def provenance(self, label: int, indices: Sequence[int]) -> list[dict] | None:
        """Optional: per index, ``{"sources": [training Items], ...more to record}`` (see the module
        docstring); None leaves the sources to the framework."""
        return None

    def close(self) -> None:
        """Release what ``fit`` holds in memory (models, GPU cache)."""

    def key_params(self) -> dict[str, Any]:
        """The parameters that key the generated images: all of them, less ``later_params`` at their defaults."""
        return {k: v for k, v in self.params.items() if not self._default_later(k)}

    def fit_signature(self) -> dict[str, Any]:
        """The parameters that key the fitted state: ``fit_params``, less ``later_params`` at their defaults."""
        return {k: self.params[k] for k in self.fit_params if not self._default_later(k)}

    def _default_later(self, key: str) -> bool:
        return key in self.later_params and self.params[key] == self.defaults[key]


def _check_type(augmenter: str, key: str, value: Any, default: Any) -> Any:
    """Values are not coerced across kinds (``"0.1"`` is not 0.1), except int -> float."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ConfigError(f"augmenter {augmenter!r} parameter {key!r} must be {type(default).__name__} like its "
                          f"default {default!r}; got {value!r} ({type(value).__name__}).")
    return value


def image_seed(seed: int, label: int, index: int, stream: str) -> int:
    """The seed of output ``index`` of class ``label`` in ``stream`` (the seed stream
    ``augment:<label>:<stream>:<index>``), unrelated to its neighbours'; what keeps image k the same
    whatever the batching. 63 bits: any torch or NumPy generator takes it, and a class's thousands of
    images do not collide as they might in 31."""
    return seeds.derive(seed, "augment", label, stream, index, bits=63)


AUGMENTERS: Registry[type[Augmenter]] = Registry("augmenter", package="automl.augment")


register = AUGMENTERS.register_class  # ``@register`` above an augmenter class: its ``name`` is its key


def build_augmenter(name: str, params: Mapping[str, Any] | None = None) -> Augmenter:
    from automl._imports import require

    cls = AUGMENTERS.get(name)
    augmenter = cls(**dict(params or {}))  # parameter errors first: they need no packages
    for module in cls.requires:
        require(module, f"the {cls.name} augmenter")
    return augmenter
