"""Center loss (Wen et al. 2016; MLL paper, Eq. 8) on the 64-d projection of the utterance feature."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import register_loss
from serkit.losses.supcon import dominant_class


@register_loss("center")
class CenterLoss(nn.Module):
    """``L_center = 1/B sum_b ||z_b - c_{y_b}||^2`` on ``z = out[feature_key]`` (batch, dim).

    ``y_b`` is the dominant (argmax) class of the soft label (``emotion_soft`` under mixup, else ``emotion``).
    The class centers are a parameter of this module, ``centers`` (num_classes, dim), learned by gradient descent
    on this loss (no moving-average update).

    Optimizer contract: the centers get their own learning rate. A trainer must put ``loss.centers`` in a separate
    param group with ``lr=loss.lr`` (paper: 5e-3 for centers vs 1e-4 for the model, both decayed by 7/8 per epoch)
    and no weight decay, and exclude them from the model's group. ``loss.lr`` is a plain attribute (default 5e-3).

    Args:
        num_classes: number of emotion classes C.
        dim: feature dimension of ``z`` (MLL: 64).
        feature_key: key of ``out`` with ``z`` (default ``"projection"``).
        lr: learning rate for the centers' param group.
    """

    def __init__(self, num_classes: int, dim: int = 64, feature_key: str = "projection", lr: float = 5e-3):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"center: num_classes and dim must be positive, got {num_classes}, {dim}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.feature_key = feature_key
        self.lr = float(lr)
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.dim))

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        z = out[self.feature_key]
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"center: out[{self.feature_key!r}] must be (batch, {self.dim}), got {tuple(z.shape)}")
        y = dominant_class(batch).to(z.device)
        c = self.centers.to(z.dtype)[y]
        return ((z - c) ** 2).sum(-1).mean()
