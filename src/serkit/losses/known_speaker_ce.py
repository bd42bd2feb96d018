"""Speaker cross-entropy over the training speakers only (HCLD's L_spe).

Under speaker-independent folds the validation speakers are unknown to the speaker head (label -1): they are
ignored, and a batch without any known speaker gives 0 (plain ``speaker_ce`` returns NaN there, which only pollutes
``val_loss``).
"""

from __future__ import annotations

import torch

from serkit.losses.base import register_loss
from serkit.losses.classification import CrossEntropy


@register_loss("hcld_speaker_ce")
class KnownSpeakerCE(CrossEntropy):
    """Speaker CE on ``speaker_logits`` over training speakers; items with speaker ``< 0`` are ignored and a batch
    without any known speaker gives 0 (with grad) instead of NaN."""

    def __init__(self, **kw):
        super().__init__(logits_key="speaker_logits", target_key="speaker", **kw)

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = out[self.logits_key]
        y = batch[self.target_key].long()
        if not bool((y >= 0).any()):
            return logits.sum() * 0.0
        return super().forward(out, batch)
