"""The built-in Keras backbones, one per file; each registers itself in ``EXTRACTORS``."""
