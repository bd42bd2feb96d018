"""Downstream model registry. A model is an ``nn.Module`` mapping a batch dict to an output dict (see
:mod:`serkit.losses.base` for the keys) and is built from a :class:`ModelSpec` plus config options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from serkit.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


@dataclass
class ModelSpec:
    """What a downstream model needs to know about its input and task."""

    task: str  # "classification" | "regression"
    num_outputs: int  # classes, or regression attributes
    num_layers: int  # hidden states per utterance in the input features
    hidden_size: int  # feature dimension
    num_speakers: int = 0
    class_names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. per-view sizes for multi-view models
    #: how to combine the layers it is given, from the feature stage (``features.layers``): ``"weighted"`` (learned
    #: weighted sum), ``"all"`` (concatenate; one layer is that layer) or None (the model's own default)
    layers: str | None = None


def register_model(name: str):
    def deco(cls):
        _MODELS[name] = cls
        return cls

    return deco


def build_model(spec: ModelSpec, name: str, **options) -> nn.Module:
    _import_all()
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
    _import_all()
    return sorted(_MODELS)


def _import_all():
    """Import every module of :mod:`serkit.models`, so that each registers its models (no recipe is imported)."""
    import importlib
    import pkgutil

    import serkit.models as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"serkit.models.{m.name}")
