"""One signature for every loss, a registry, and the objective (a weighted sum of named terms).

Every loss is an ``nn.Module`` called as ``loss(out, batch) -> scalar tensor`` where

``out`` (what a model's forward returns, a dict of tensors; keys a loss does not need may be absent):
    ``logits``            (batch, classes)      emotion logits
    ``prediction``        (batch, attributes)   regression outputs (arousal, valence, dominance order of the task)
    ``embedding``         (batch, dim)          utterance embedding (pooled)
    ``frames``            (batch, frames, dim)  frame-level features after the downstream's frame layers
    ``frame_mask``        (batch, frames) bool  True on real frames
    ``emotion_features``  (batch, dim)          HCLD emotion branch X_e
    ``speaker_features``  (batch, dim)          HCLD speaker branch X_s
    ``speaker_logits``    (batch, speakers)     auxiliary heads, when switched on
    ``gender_logits``     (batch, 2)
    ``projection``        (batch, dim)          e.g. MLL's 64-d projection for the center loss
    ``frame_projection``  (batch, frames, dim)  e.g. MLL's 64-d frame projection for frame-level SupCon

``batch`` (what the data loader yields, a dict):
    ``emotion``       (batch,) long         class index
    ``emotion_soft``  (batch, classes)      soft labels (mixup); when present, classification losses use it
    ``speaker``       (batch,) long         speaker index within the training set (-1 unknown)
    ``gender``        (batch,) long         0 female, 1 male (-1 unknown)
    ``targets``       (batch, attributes)   regression targets
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from serkit.errors import ConfigError

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Decorator: make a loss class constructible by ``name`` from a config."""

    def deco(cls):
        _LOSSES[name] = cls
        return cls

    return deco


def loss_class(name: str) -> Callable[..., nn.Module]:
    """The registered loss class ``name`` (ConfigError naming the known ones otherwise)."""
    _import_all()
    if name not in _LOSSES:
        raise ConfigError(f"objective: unknown loss {name!r}; known: {sorted(_LOSSES)}")
    return _LOSSES[name]


def build_loss(name: str, **kwargs) -> nn.Module:
    cls = loss_class(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"objective: bad options for loss {name!r}: {exc}") from None


def available_losses() -> list[str]:
    _import_all()
    return sorted(_LOSSES)


def _import_all():
    import importlib
    import pkgutil

    import serkit.losses as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"serkit.losses.{m.name}")


def class_targets(out: dict, batch: dict, num_classes: int) -> torch.Tensor:
    """Soft targets (batch, classes): ``batch['emotion_soft']`` when present, else one-hot of ``emotion``."""
    if "emotion_soft" in batch:
        return batch["emotion_soft"].float()
    return nn.functional.one_hot(batch["emotion"].long(), num_classes).float()


class Objective(nn.Module):
    """Weighted sum of named loss terms: ``L = sum_k w_k * loss_k(out, batch)``.

    ``terms`` is a config list like ``[{"name": "cross_entropy", "weight": 1.0, ...options}]``; ``key`` names the
    term in logs (default: its loss name). Calling returns ``(total, {key: value})`` with detached parts.
    """

    def __init__(self, terms: list[dict]):
        super().__init__()
        if not terms:
            raise ConfigError("objective: needs at least one term")
        self.weights: dict[str, float] = {}
        self.terms = nn.ModuleDict()
        for i, spec in enumerate(terms):
            spec = dict(spec)
            if "name" not in spec:
                raise ConfigError(f"objective[{i}]: missing 'name' (one of {available_losses()})")
            name = spec.pop("name")
            weight = float(spec.pop("weight", 1.0))
            key = spec.pop("key", name)
            if key in self.terms:
                raise ConfigError(f"objective[{i}]: duplicate term {key!r}; give it a distinct 'key'")
            self.terms[key] = build_loss(name, **spec)
            self.weights[key] = weight

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        parts = {}
        for key, loss in self.terms.items():
            w = self.weights[key]
            if w == 0:
                continue
            value = loss(out, batch)
            parts[key] = value.detach()
            total = w * value if total is None else total + w * value
        return total, parts
