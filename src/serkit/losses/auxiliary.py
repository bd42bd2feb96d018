"""Auxiliary classification terms on speaker and gender heads (multi-task recipes switch them on)."""

from __future__ import annotations

from serkit.losses.base import register_loss
from serkit.losses.classification import CrossEntropy


@register_loss("speaker_ce")
class SpeakerCE(CrossEntropy):
    def __init__(self, **kw):
        super().__init__(logits_key="speaker_logits", target_key="speaker", **kw)


@register_loss("gender_ce")
class GenderCE(CrossEntropy):
    def __init__(self, **kw):
        super().__init__(logits_key="gender_logits", target_key="gender", **kw)
