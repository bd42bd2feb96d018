"""Frame-level multi-scale pseudo-label prediction head (GMP-ATL retraining stage, Pan et al., Interspeech 2024).

Sec. 3.2: after HuBERT (with its usual masking) "a linear projection module, which comprises two linear layers and
one ReLU activation layer", trained with CE against the frame-level pseudo-labels of k-means at k = 64, 512, 4096
(:mod:`serkit.clustering`). One such module per scale here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PseudoLabelHead(nn.Module):
    """Per scale ``k``: ``Linear(dim, hidden) -> ReLU -> Linear(hidden, k)`` on every frame.

    ``forward(frames (batch, frames, dim)) -> {k: logits (batch, frames, k)}`` (int keys); a model puts this dict
    under ``out["pseudo_logits"]`` for the ``pseudo_label_ce`` loss.

    Args:
        dim: frame feature width.
        ks: cluster counts, one output per scale.
        hidden: hidden width of each projection module.
    """

    def __init__(self, dim: int, ks: Sequence[int] = (64, 512, 4096), hidden: int = 256):
        super().__init__()
        self.ks = [int(k) for k in ks]
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"PseudoLabelHead: duplicate scales in {list(ks)}")
        self.heads = nn.ModuleDict({
            str(k): nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, k)) for k in self.ks
        })

    def forward(self, frames: torch.Tensor) -> dict[int, torch.Tensor]:
        """(batch, frames, dim) -> ``{k: (batch, frames, k)}``."""
        return {k: self.heads[str(k)](frames) for k in self.ks}
