"""Xception (Chollet, 2017): 2048 features."""

from automl.extractors.backbone import EXTRACTORS, Backbone

EXTRACTORS.register("xception")(Backbone(
    "xception", "Xception", "xception", dim=2048, min_size=71,
    weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5", weights_url_dir="xception"))
