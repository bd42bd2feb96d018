"""The catalog of downstream models: imports every module that registers a model and builds one by name."""

from __future__ import annotations

from torch import nn

import serkit.models.baseline
import serkit.models.hcld
import serkit.models.mll  # noqa: F401
from serkit.errors import ConfigError
from serkit.models.registry import _MODELS, ModelSpec


def build_model(spec: ModelSpec, name: str, **options) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; known: {sorted(_MODELS)}")
    if spec.layers is not None and "layers" not in options and _accepts(_MODELS[name], "layers"):
        options = {**options, "layers": spec.layers}  # the feature stage's layer choice (one spelling)
    try:
        return _MODELS[name](spec, **options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad option: {exc}") from None


def _accepts(cls, param: str) -> bool:
    import inspect

    try:
        return param in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def available_models() -> list[str]:
    return sorted(_MODELS)
