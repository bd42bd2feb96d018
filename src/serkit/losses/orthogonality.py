"""Orthogonality decoupling penalty between the emotion and speaker branches (HCLD's Table II "orth" baseline,
after Wang et al., ICASSP 2022, ref. [3] of the HCLD paper).

    L_orth = ||X^_e^T X^_s||_F^2 / B^2

with ``X_e (B, d_e)``, ``X_s (B, d_s)`` (dims may differ; the product is ``(d_e, d_s)``). Choices: rows are
L2-normalised first (``normalize=True``) so the penalty cannot be lowered by shrinking feature norms, and the sum
is divided by ``B^2`` (``scale="batch_sq"``): since ``||X_e^T X_s||_F^2 = sum_{b,b'} (x_e,b . x_e,b')(x_s,b . x_s,b')``
has B^2 terms each in [-1, 1], the normalised value is a batch-size-independent number in [0, 1].
``scale="batch"`` divides by B, ``"none"`` keeps the raw sum.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from serkit.errors import ConfigError
from serkit.losses.base import register_loss

_SCALES = ("batch_sq", "batch", "none")


def orthogonality_loss(emotion_features: torch.Tensor, speaker_features: torch.Tensor, normalize: bool = True,
                       scale: str = "batch_sq") -> torch.Tensor:
    """``||X_e^T X_s||_F^2`` (optionally row-normalised, scaled by ``B^2``/``B``/1); inputs ``(B, d_e)``,
    ``(B, d_s)``."""
    if scale not in _SCALES:
        raise ConfigError(f"orthogonality: scale must be one of {_SCALES}, got {scale!r}")
    if emotion_features.shape[0] != speaker_features.shape[0]:
        raise ValueError("orthogonality: the two branches have different batch sizes")
    xe, xs = emotion_features, speaker_features
    if normalize:
        xe, xs = F.normalize(xe, dim=-1), F.normalize(xs, dim=-1)
    value = (xe.t() @ xs).pow(2).sum()
    b = xe.shape[0]
    if scale == "batch_sq":
        value = value / (b * b)
    elif scale == "batch":
        value = value / b
    return value


@register_loss("orthogonality")
class Orthogonality(nn.Module):
    """``orthogonality_loss(out[emotion_key], out[speaker_key])``; defaults ``normalize=True``,
    ``scale="batch_sq"`` (see module docstring)."""

    def __init__(self, normalize: bool = True, scale: str = "batch_sq", emotion_key: str = "emotion_features",
                 speaker_key: str = "speaker_features"):
        super().__init__()
        if scale not in _SCALES:
            raise ConfigError(f"orthogonality: scale must be one of {_SCALES}, got {scale!r}")
        self.normalize, self.scale = bool(normalize), scale
        self.emotion_key, self.speaker_key = emotion_key, speaker_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        return orthogonality_loss(out[self.emotion_key], out[self.speaker_key], self.normalize, self.scale)
