"""The objective: a weighted sum of named loss terms, each built by name from the registry of losses.

Importing this module imports every loss module, so every registered name is known here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import serkit.losses.amsoftmax
import serkit.losses.auxiliary
import serkit.losses.center
import serkit.losses.classification
import serkit.losses.focal
import serkit.losses.frame_supcon
import serkit.losses.icld
import serkit.losses.kl_div
import serkit.losses.known_speaker_ce
import serkit.losses.lcl
import serkit.losses.orthogonality
import serkit.losses.pseudo_label
import serkit.losses.regression
import serkit.losses.supcon  # noqa: F401  (registers its losses)
from serkit.errors import ConfigError
from serkit.losses.base import _LOSSES


def loss_class(name: str) -> Callable[..., nn.Module]:
    """The registered loss class ``name`` (ConfigError naming the known ones otherwise)."""
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
    return sorted(_LOSSES)



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
