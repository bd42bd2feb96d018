"""ICLD: HCLD's instance-level contrastive decoupling loss (Li et al., ICASSP 2025, Sec. III-D1).

Pairs inside a batch (see :func:`serkit.data.pairs.make_pairs`):
positive pairs ``x+`` = same speaker, different emotion; negative pairs ``x-`` = different speaker, same emotion.

    L_positive = 1/|x+| * sum_{(i,j) in x+} (1 - cos(X_e[i], X_e[j]))^2
    L_negative = 1/|x-| * sum_{(i,j) in x-} hinge(cos(X_s[i], X_s[j]))^2
    L_CLD      = w_pos * L_positive + w_neg * L_negative          (paper: w_pos = w_neg = 1)

Hinge. The paper's equation writes ``max(0, Margin - cos)^2``, which *pulls* negative pairs together until their
similarity reaches the margin, while its text says "we want the speaker features to be further apart ... hoping
that this similarity is less than a preset threshold (Margin)", i.e. ``max(0, cos - Margin)^2``. The text's intent
is the default (``hinge="text"``); ``hinge="formula"`` reproduces the printed equation.

Margin. The paper gives no value; the default 0.5 is ours (a loose cap: negative pairs above cosine 0.5 are
pushed apart, pairs below it are left alone, as in common cosine-embedding hinge practice).

Feature keys. The paper (and the issue this module implements) put L_positive on the emotion features X_e and
L_negative on the speaker features X_s; both keys are options (``pos_key``, ``neg_key``) for ablations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from serkit.data.pairs import make_pairs
from serkit.errors import ConfigError
from serkit.losses.base import register_loss


def icld_terms(pos_features: torch.Tensor, neg_features: torch.Tensor, emotion: torch.Tensor,
               speaker: torch.Tensor, margin: float = 0.5, hinge: str = "text",
               eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_positive, L_negative)`` scalars. Features ``(batch, dim)`` (dims may differ between the two),
    labels ``(batch,)`` long (``< 0`` unknown, never paired). A term with no pairs is an exact zero that still
    carries a graph (``0 * features.sum()``), so ``backward`` works on any batch."""
    if hinge not in ("text", "formula"):
        raise ConfigError(f"icld: hinge must be 'text' or 'formula', got {hinge!r}")
    pos, neg = make_pairs(emotion, speaker)
    if len(pos):
        cos = F.cosine_similarity(pos_features[pos[:, 0]], pos_features[pos[:, 1]], dim=-1, eps=eps)
        l_pos = ((1.0 - cos) ** 2).mean()
    else:
        l_pos = pos_features.sum() * 0.0
    if len(neg):
        cos = F.cosine_similarity(neg_features[neg[:, 0]], neg_features[neg[:, 1]], dim=-1, eps=eps)
        gap = cos - margin if hinge == "text" else margin - cos
        l_neg = (F.relu(gap) ** 2).mean()
    else:
        l_neg = neg_features.sum() * 0.0
    return l_pos, l_neg


@register_loss("icld")
class ICLD(nn.Module):
    """HCLD instance-level contrastive decoupling loss ``w_pos * L_positive + w_neg * L_negative``.

    Reads ``out[pos_key]`` (default ``"emotion_features"``, X_e) and ``out[neg_key]`` (default
    ``"speaker_features"``, X_s), both ``(batch, dim)``, and ``batch["emotion"]``, ``batch["speaker"]`` ``(batch,)``
    long. ``margin`` (cosine units, default 0.5 — not given in the paper), ``hinge`` ``"text"`` (default,
    ``max(0, cos - margin)^2``) or ``"formula"`` (``max(0, margin - cos)^2``, the paper's printed equation).
    Returns a scalar; zero (with grad) when the batch has no pairs.
    """

    def __init__(self, margin: float = 0.5, hinge: str = "text", pos_weight: float = 1.0, neg_weight: float = 1.0,
                 pos_key: str = "emotion_features", neg_key: str = "speaker_features"):
        super().__init__()
        if hinge not in ("text", "formula"):
            raise ConfigError(f"icld: hinge must be 'text' or 'formula', got {hinge!r}")
        if not -1.0 <= margin <= 1.0:
            raise ConfigError(f"icld: margin is a cosine similarity in [-1, 1], got {margin}")
        self.margin, self.hinge = float(margin), hinge
        self.pos_weight, self.neg_weight = float(pos_weight), float(neg_weight)
        self.pos_key, self.neg_key = pos_key, neg_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        l_pos, l_neg = icld_terms(out[self.pos_key], out[self.neg_key], batch["emotion"], batch["speaker"],
                                  margin=self.margin, hinge=self.hinge)
        return self.pos_weight * l_pos + self.neg_weight * l_neg
