"""Model registry: a name maps to a factory `fn(*, num_classes, in_channels, **kwargs)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from trustvision.errors import ConfigError
from trustvision.models.base import ImageClassifier

Factory = Callable[..., ImageClassifier]

_FACTORIES: dict[str, Factory] = {}
_REQUIRED = ("num_classes", "in_channels")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering a factory under `name`; a name may be registered once."""

    def decorate(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"model `{name}` is already registered")
        missing = [p for p in _REQUIRED if p not in inspect.signature(factory).parameters]
        if missing:
            raise TypeError(f"factory of `{name}` lacks keyword argument(s) {missing}")
        _FACTORIES[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_FACTORIES)


def model_arguments(name: str) -> dict[str, Any]:
    """The optional keyword arguments of model `name` with their defaults."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.name not in _REQUIRED}


def create_model(
    name: str, *, num_classes: int, in_channels: int = 3, **kwargs: Any
) -> ImageClassifier:
    """Build model `name`; an unknown name or argument is a ConfigError listing the valid ones."""
    factory = _factory(name)
    known = model_arguments(name)
    for key in kwargs:
        if key not in known:
            choices = ", ".join(f"`{k}`" for k in known) or "none"
            raise ConfigError(
                f"model `{name}` has no argument `{key}`; its arguments are: {choices}"
            )
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{key}={value}` must be a positive integer")
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def create_model_for(
    name: str, *, num_classes: int, image_shape: tuple[int, ...], **kwargs: Any
) -> ImageClassifier:
    """`create_model` for images of `image_shape` (C, H, W): their channels, and their side for a
    model that takes an `image_size` and was given none (its default is MNIST's 28)."""
    if "image_size" in model_arguments(name):
        kwargs.setdefault("image_size", image_shape[-1])
    return create_model(name, num_classes=num_classes, in_channels=image_shape[0], **kwargs)


def _factory(name: str) -> Factory:
    if name not in _FACTORIES:
        known = ", ".join(list_models())
        raise ConfigError(f"unknown model `{name}`; choose one of: {known}")
    return _FACTORIES[name]
