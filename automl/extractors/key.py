"""The embedding cache's key: everything that determines an embedding besides the image.

Its ``to_dict()`` is the ``key.json`` of a cache folder and its ``slug()`` the folder's name, so
neither may change: an existing store keeps its embeddings only while both stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field


def _decode_version() -> int:
    # Read when a key is made, not when this module is imported: automl.images loads PIL, and the
    # recipe (which imports this package for its constants) must stay light.
    from automl.images import DECODE_VERSION

    return DECODE_VERSION


@dataclass(frozen=True)
class ExtractorKey:
    """Everything that determines an embedding besides the image: the embedding cache's key."""

    extractor: str
    weights: str  # Weights.key(): "imagenet:<file>", "random:seed=<s>:keras=<version>" or "file:<content hash>"
    image_size: int  # 0 for a model file, which has its own input size
    precision: str  # resolved, never "auto"; "native" for a model file
    backend: str
    decode_version: int = field(default_factory=_decode_version)

    def slug(self) -> str:
        """A folder name: readable, and unique through a hash of the whole key."""
        digest = hashlib.blake2b(json.dumps(asdict(self), sort_keys=True).encode(), digest_size=6)
        kind = self.weights.split(":", 1)[0]
        size = f"{self.image_size}px" if self.image_size else "native"
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.extractor)[:80]  # file names with options run long
        return f"{name}-{size}-{self.precision}-{kind}-{digest.hexdigest()}"

    def to_dict(self) -> dict:
        return asdict(self)
