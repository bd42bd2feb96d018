"""Cross-entropy for emotion classes (optional class weights, label smoothing, soft labels)."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import register_loss


@register_loss("cross_entropy")
class CrossEntropy(nn.Module):
    """CE on ``out[logits_key]`` against ``batch[target_key]``; soft labels from ``batch['emotion_soft']`` if present.

    ``class_weights``: list of per-class weights (e.g. inverse frequency, set by the trainer when
    ``class_weights: balanced``).
    """

    def __init__(self, logits_key: str = "logits", target_key: str = "emotion", class_weights=None,
                 label_smoothing: float = 0.0, ignore_index: int = -1):
        super().__init__()
        self.logits_key, self.target_key = logits_key, target_key
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = out[self.logits_key]
        if self.target_key == "emotion" and "emotion_soft" in batch:
            soft = batch["emotion_soft"].to(logits.dtype)
            logp = torch.log_softmax(logits, dim=-1)
            if self.class_weights is not None:
                logp = logp * self.class_weights
            return -(soft * logp).sum(-1).mean()
        return nn.functional.cross_entropy(
            logits, batch[self.target_key].long(), weight=self.class_weights,
            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
        )
