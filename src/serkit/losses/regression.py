"""Regression losses: concordance correlation (1 - CCC per attribute, averaged) and MSE."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import register_loss


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation coefficient per column: (batch, attributes) -> (attributes,).

    CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2), population (biased) moments.
    """
    pm, tm = pred.mean(0), target.mean(0)
    pv, tv = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - pm) * (target - tm)).mean(0)
    return 2 * cov / (pv + tv + (pm - tm) ** 2 + eps)


@register_loss("ccc")
class CCCLoss(nn.Module):
    """``mean_a (1 - CCC_a)`` over attributes, optionally weighted per attribute."""

    def __init__(self, weights=None, pred_key: str = "prediction", target_key: str = "targets"):
        super().__init__()
        self.pred_key, self.target_key = pred_key, target_key
        self.attr_weights = None if weights is None else list(map(float, weights))

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        per = 1 - ccc(out[self.pred_key].float(), batch[self.target_key].float())
        if self.attr_weights is None:
            return per.mean()
        w = torch.tensor(self.attr_weights, device=per.device)
        return (per * w).sum() / w.sum()


@register_loss("mse")
class MSELoss(nn.Module):
    def __init__(self, pred_key: str = "prediction", target_key: str = "targets"):
        super().__init__()
        self.pred_key, self.target_key = pred_key, target_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        return nn.functional.mse_loss(out[self.pred_key].float(), batch[self.target_key].float())
