"""Supervised contrastive loss (Khosla et al., NeurIPS 2020): the shared core and an utterance-level term.

:func:`supcon_loss` is the public core (also used by :mod:`serkit.losses.frame_supcon`, MLL paper Eq. 10, and
available to other recipes). For anchor ``a`` with positives ``P(a)`` (same label, excluding ``a``) and all
others ``A(a) = {k != a}``::

    l_a = -1/|P(a)| * sum_{p in P(a)} log( exp(s_ap / tau) / sum_{k in A(a)} exp(s_ak / tau) )

with ``s`` the cosine similarity of L2-normalised features. Anchors without positives are skipped and the loss is
the mean of ``l_a`` over the remaining anchors (0, still attached to the graph, when none remain).
"""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import register_loss

__all__ = ["SupCon", "dominant_class", "supcon_loss"]


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon loss of ``features`` (N, d) (normalised here) with integer ``labels`` (N,); returns a scalar.

    ``temperature`` is tau (dimensionless; 0.07 in Khosla et al. and the MLL paper's setting).
    """
    if features.dim() != 2:
        raise ValueError(f"supcon_loss: features must be (N, d), got {tuple(features.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"supcon_loss: {features.shape[0]} features but {labels.shape[0]} labels")
    if temperature <= 0:
        raise ValueError(f"supcon_loss: temperature must be positive, got {temperature}")
    n = features.shape[0]
    if n < 2:
        return features.sum() * 0.0
    z = nn.functional.normalize(features.float(), dim=-1)
    sim = z @ z.T / temperature  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))  # k != a in the denominator
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not valid.any():
        return features.sum() * 0.0
    # log_prob is -inf on the diagonal only, which pos excludes; zero it before the product to avoid nan
    pos_log_prob = log_prob.masked_fill(~pos, 0.0).sum(1)
    per_anchor = -pos_log_prob[valid] / n_pos[valid]
    return per_anchor.mean()


def dominant_class(batch: dict) -> torch.Tensor:
    """(batch,) long: argmax of ``batch['emotion_soft']`` when present (mixup), else ``batch['emotion']``.

    Ties (e.g. an equal-weight mix) go to the lower class index.
    """
    if "emotion_soft" in batch:
        return batch["emotion_soft"].argmax(dim=-1)
    return batch["emotion"].long()


@register_loss("supcon")
class SupCon(nn.Module):
    """Utterance-level SupCon on ``out[feature_key]`` (batch, dim) with the dominant emotion class as label.

    Args:
        feature_key: key of ``out`` holding the utterance features (default ``"embedding"``).
        temperature: tau.
    """

    def __init__(self, feature_key: str = "embedding", temperature: float = 0.07):
        super().__init__()
        self.feature_key = feature_key
        self.temperature = float(temperature)

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        feats = out[self.feature_key]
        return supcon_loss(feats, dominant_class(batch).to(feats.device), self.temperature)
