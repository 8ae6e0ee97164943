"""Feature kinds: each kind one module, found through the registry (``kind_of``); see ``base``.

Importing the package registers the built-in kinds, in the order error messages list them.
"""
from twotower.features import categorical, dense, history, id, multi_hot, numeric, text  # noqa: F401 - each registers its kind
from twotower.features.base import (
    FeatureKind,
    FeatureSpec,
    FittedFeature,
    Preprocessor,
    ServingInput,
    build_encoder,
    fit_feature,
    kind_of,
    register_kind,
    registered_kinds,
    unregister_kind,
)

__all__ = [
    "FeatureKind", "FeatureSpec", "FittedFeature", "Preprocessor", "ServingInput", "build_encoder", "fit_feature", "kind_of", "register_kind",
    "registered_kinds", "unregister_kind",
]
