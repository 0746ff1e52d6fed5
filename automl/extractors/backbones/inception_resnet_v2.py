"""Inception-ResNet v2 (Szegedy et al., 2017): 1536 features."""

from automl.extractors.backbone import EXTRACTORS, Backbone

EXTRACTORS.register("inception-resnet-v2")(Backbone(
    "inception-resnet-v2", "InceptionResNetV2", "inception_resnet_v2", dim=1536, min_size=75,
    weights_file="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_url_dir="inception_resnet_v2"))
