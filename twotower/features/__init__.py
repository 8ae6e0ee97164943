"""Feature kinds: each kind one module, found through the registry (``kind_of``); see ``base``.

Importing the package registers the built-in kinds, in the order error messages list them.
"""
# Each module registers its kind; the order of these imports is the order error messages list the kinds in.
from twotower.features import id, categorical, multi_hot, numeric, text, dense, history, time  # noqa: F401, I001
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
