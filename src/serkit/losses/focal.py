"""Focal loss with soft targets (Lin et al. 2017; MLL paper, Eq. 7)."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import class_targets, register_loss


@register_loss("focal")
class FocalLoss(nn.Module):
    """``L_focal = mean_b ( -sum_c y_c (1 - y_hat_c)^gamma log y_hat_c )``, ``y_hat = softmax(out[logits_key])``.

    ``y`` are the soft targets of :func:`serkit.losses.base.class_targets`; ``gamma`` (default 2) is the focusing
    parameter (``gamma = 0`` gives soft-label cross-entropy).
    """

    def __init__(self, gamma: float = 2.0, logits_key: str = "logits"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.logits_key = logits_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = out[self.logits_key]
        y = class_targets(out, batch, logits.shape[-1]).to(logits.dtype)
        logp = torch.log_softmax(logits, dim=-1)
        weight = (1.0 - logp.exp()).clamp_min(0.0) ** self.gamma
        return -(y * weight * logp).sum(-1).mean()
