"""Image classifiers behind one contract (`features`, `head`, `forward`) and a name registry.

Importing this package imports every model file, so every model is registered.
"""

from trustvision.models import cnn, compact, resnet, wrn  # noqa: F401  (registers the models)
from trustvision.models.base import ImageClassifier
from trustvision.models.registry import (
    create_model,
    create_model_for,
    list_models,
    model_arguments,
    register_model,
)

__all__ = [
    "ImageClassifier",
    "create_model",
    "create_model_for",
    "list_models",
    "model_arguments",
    "register_model",
]
