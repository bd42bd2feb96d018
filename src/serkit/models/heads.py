"""Output heads: classification, regression, and auxiliary (speaker, gender) heads."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0, activation=nn.ReLU) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> out`` with activation and dropout between layers."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), activation(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class ClassificationHead(nn.Module):
    """``(batch, dim) -> logits (batch, classes)`` through an optional hidden MLP."""

    def __init__(self, dim: int, num_classes: int, hidden: list[int] | None = None, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(dim, hidden or [], num_classes, dropout)

    def forward(self, x):
        return self.net(x)


class RegressionHead(nn.Module):
    """``(batch, dim) -> (batch, attributes)``."""

    def __init__(self, dim: int, num_outputs: int, hidden: list[int] | None = None, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(dim, hidden or [], num_outputs, dropout)

    def forward(self, x):
        return self.net(x)
