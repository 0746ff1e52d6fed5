"""The extractor family: frozen CNNs that turn images into embedding vectors.

- ``resolve(name, store)`` is the one seam from a written name to a spec (``ExtractorSpec``): a
  built-in Keras ``Backbone`` (``backbone.py``; one file each in ``backbones/``, registered in
  ``EXTRACTORS``), a ``ModelFile`` (``files.py``: tflite, keras, h5, SavedModel) or an extractor
  ``automl pretrain`` saved in the store (``pretrained.py``).
- ``Weights`` (``weights.py``): a backbone's weights choice, parsed once.
- ``ExtractorKey`` (``key.py``): the embedding cache's key; ``precision.py`` resolves ``auto``.

Importing this package loads neither Keras nor TensorFlow (nor PIL): recipes import its constants.
Adding a Keras backbone is adding a file to ``backbones/``.
"""

from automl.extractors.backbone import EXTRACTORS, Backbone, dtype_policy
from automl.extractors.files import ModelFile, Preprocessing
from automl.extractors.key import ExtractorKey
from automl.extractors.precision import (PRECISIONS, describe_machine, keras_backend, keras_home,
                                         resolve_precision)
from automl.extractors.pretrained import pretrained_names, pretrained_path
from automl.extractors.resolution import UnknownExtractorError, build_extractor, extractor_key, resolve
from automl.extractors.spec import DEFAULT_IMAGE_SIZE, Extractor, ExtractorSpec, import_keras
from automl.extractors.weights import Weights

# The smallest side any backbone accepts (each checks its own): what a recipe can check up front.
MIN_IMAGE_SIZE = min(EXTRACTORS.get(name).min_size for name in EXTRACTORS)

__all__ = ["DEFAULT_IMAGE_SIZE", "EXTRACTORS", "MIN_IMAGE_SIZE", "PRECISIONS", "Backbone", "Extractor",
           "ExtractorKey", "ExtractorSpec", "ModelFile", "Preprocessing", "UnknownExtractorError", "Weights",
           "build_extractor", "describe_machine", "dtype_policy", "extractor_key", "import_keras", "keras_backend",
           "keras_home", "pretrained_names", "pretrained_path", "resolve", "resolve_precision"]
