"""Downstream model specs and the registration decorator (:mod:`serkit.models.catalog` builds them). A model is an
``nn.Module`` mapping a batch dict to an output dict (see :mod:`serkit.losses.base` for the keys) and is built from a
:class:`ModelSpec` plus config options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

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
