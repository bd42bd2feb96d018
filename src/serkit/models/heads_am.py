"""Cosine classifier head for the additive-margin softmax (AM-Softmax; Wang et al. 2018), as used by GMP-ATL.

Pan, Yang, Lu, Ma, Zhao, "GMP-ATL: Gender-augmented Multi-scale Pseudo-label Enhanced Adaptive Transfer Learning
for Speech Emotion Recognition via HuBERT", Interspeech 2024, Eqs. (2)-(3): ``cos(theta_j,i) = x_i^T w_j /
(||x_i|| ||w_j||)``; s = 30, m = 0.2. The margin is applied by the ``am_softmax`` loss
(:mod:`serkit.losses.amsoftmax`), never at inference.
"""

from __future__ import annotations

import torch
from torch import nn


class AMSoftmaxHead(nn.Module):
    """Normalised-weight cosine classifier: its own class matrix ``W`` (num_classes, dim), no bias.

    ``forward(x)`` returns ``{"cosine": cos (batch, classes), "logits": s * cos (batch, classes)}``: ``cosine``
    (un-scaled, in [-1, 1]) is what the ``am_softmax`` loss reads; ``logits`` (scaled, no margin) is what
    evaluation and any CE/softmax consumer read. Merge the dict into the model's ``out``.

    Args:
        dim: width of the input embedding.
        num_classes: number of emotion classes.
        s: scale (paper: 30).
        m: additive margin (paper: 0.2); stored for reference, the loss applies it.
    """

    def __init__(self, dim: int, num_classes: int, s: float = 30.0, m: float = 0.2, eps: float = 1e-8):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m, self.eps = float(s), float(m), eps

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, dim) -> cos(theta) (batch, classes), Eq. (3)."""
        x = nn.functional.normalize(x, dim=-1, eps=self.eps)
        w = nn.functional.normalize(self.weight, dim=-1, eps=self.eps)
        return x @ w.t()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(batch, dim) -> ``{"cosine": (batch, classes), "logits": s * cosine}``."""
        cos = self.cosine(x)
        return {"cosine": cos, "logits": self.s * cos}
