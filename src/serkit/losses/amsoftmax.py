"""Additive-margin softmax loss ("am_softmax"; Wang et al. 2018), as in GMP-ATL (Pan et al., Interspeech 2024).

Eq. (2): ``L = -1/N sum_i log( e^{s (cos theta_{y_i,i} - m)} / (e^{s (cos theta_{y_i,i} - m)}
+ sum_{j != y_i} e^{s cos theta_{j,i}}) )``, s = 30, m = 0.2.

Keys read:
    ``out["cosine"]``     (batch, classes)  un-scaled cosines ``cos theta_{j,i}`` in [-1, 1], from
                                           :class:`serkit.models.heads_am.AMSoftmaxHead`
    ``batch["emotion"]``  (batch,) long     class index (-1: ignored)
Soft labels (``batch["emotion_soft"]``, e.g. mixup) are not supported: the margin needs one target class.
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.errors import ConfigError
from serkit.losses.base import register_loss


@register_loss("am_softmax")
class AMSoftmaxLoss(nn.Module):
    """CE over ``s * (cos - m * onehot(y))``; rows with target ``ignore_index`` are skipped.

    Args:
        s: scale (paper: 30).
        m: additive margin subtracted from the target cosine (paper: 0.2).
        cosine_key: key of the cosines in ``out``.
        target_key: key of the class indices in ``batch``.
        ignore_index: target value to skip.
    """

    def __init__(self, s: float = 30.0, m: float = 0.2, cosine_key: str = "cosine", target_key: str = "emotion",
                 ignore_index: int = -1):
        super().__init__()
        self.s, self.m = float(s), float(m)
        self.cosine_key, self.target_key, self.ignore_index = cosine_key, target_key, ignore_index

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        if self.target_key == "emotion" and "emotion_soft" in batch:
            raise ConfigError("objective: am_softmax does not support soft labels (batch['emotion_soft'], e.g. "
                              "from mixup); switch soft labels off or use cross_entropy")
        if self.cosine_key not in out:
            raise KeyError(f"am_softmax: out[{self.cosine_key!r}] missing (un-scaled cosines, batch x classes); "
                           f"use AMSoftmaxHead")
        cos = out[self.cosine_key].float()
        y = batch[self.target_key].long()
        valid = y != self.ignore_index
        onehot = nn.functional.one_hot(y.clamp(min=0), cos.shape[-1]).to(cos.dtype) * valid[:, None]
        logits = self.s * (cos - self.m * onehot)
        return nn.functional.cross_entropy(logits, y, ignore_index=self.ignore_index)
