"""KL divergence between soft targets and the predicted distribution (MLL paper, Eq. 6)."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import class_targets, register_loss


@register_loss("kl")
class KLDivergence(nn.Module):
    """``L_KL = mean_b sum_c y_c log(y_c / y_hat_c)`` with ``y_hat = softmax(out[logits_key])`` (batchmean).

    ``y`` are the soft targets of :func:`serkit.losses.base.class_targets` (``emotion_soft`` under mixup, else
    one-hot of ``emotion``); entries with ``y_c = 0`` contribute 0 (``0 log 0 = 0``), and ``log y_hat`` comes from
    ``log_softmax`` so the loss stays finite for saturated logits.
    """

    def __init__(self, logits_key: str = "logits"):
        super().__init__()
        self.logits_key = logits_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = out[self.logits_key]
        y = class_targets(out, batch, logits.shape[-1]).to(logits.dtype)
        logp = torch.log_softmax(logits, dim=-1)
        return (torch.xlogy(y, y) - y * logp).sum(-1).mean()
