"""Inception v3 (Szegedy et al., 2016): 2048 features."""

from automl.extractors.backbone import EXTRACTORS, Backbone

EXTRACTORS.register("inception-v3")(Backbone(
    "inception-v3", "InceptionV3", "inception_v3", dim=2048, min_size=75,
    weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", weights_url_dir="inception_v3"))
