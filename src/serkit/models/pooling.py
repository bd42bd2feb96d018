"""Masked poolings over frames: ``(batch, frames, dim)`` + mask ``(batch, frames)`` (True = real) ->
``(batch, out)``."""

from __future__ import annotations

import torch
from torch import nn

from serkit.errors import ConfigError


def _mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    m = _mask(x, mask).unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    m = _mask(x, mask).unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    var = (((x - mean) ** 2) * m).sum(1) / m.sum(1).clamp_min(1.0)
    return (var + eps).sqrt()


class MeanPooling(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.output_size = dim

    def forward(self, x, mask=None):
        return masked_mean(x, mask)


class MaxPooling(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.output_size = dim

    def forward(self, x, mask=None):
        m = _mask(x, mask).unsqueeze(-1)
        return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)


class StatsPooling(nn.Module):
    """Mean and standard deviation concatenated: ``(batch, 2*dim)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.output_size = 2 * dim

    def forward(self, x, mask=None):
        return torch.cat([masked_mean(x, mask), masked_std(x, mask)], dim=-1)


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018): attention-weighted mean and std, ``(batch, 2*dim)``."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.output_size = 2 * dim

    def forward(self, x, mask=None):
        m = _mask(x, mask)
        scores = self.attention(x).squeeze(-1).masked_fill(~m, float("-inf"))
        alpha = torch.softmax(scores, dim=1).unsqueeze(-1)
        mean = (alpha * x).sum(1)
        var = (alpha * (x - mean.unsqueeze(1)) ** 2).sum(1)
        return torch.cat([mean, (var + 1e-5).sqrt()], dim=-1)


POOLINGS = {"mean": MeanPooling, "max": MaxPooling, "stats": StatsPooling, "attentive_stats": AttentiveStatsPooling}


def build_pooling(name: str, dim: int) -> nn.Module:
    if name == "flam":
        from serkit.models.flam import FLAM

        return FLAM(dim)
    if name == "attention":
        from serkit.models.flam import AttentionPooling

        return AttentionPooling(dim)
    if name not in POOLINGS:
        raise ConfigError(f"model.pooling={name!r} is unknown; "
                          f"choose one of {sorted(POOLINGS) + ['attention', 'flam']}")
    return POOLINGS[name](dim)
