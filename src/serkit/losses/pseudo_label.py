"""Multi-scale frame-level pseudo-label cross-entropy ("pseudo_label_ce"), GMP-ATL Sec. 3.2 (HuBERT-style).

Keys read:
    ``out["pseudo_logits"]``   dict ``k -> (batch, frames, k)``  from
                               :class:`serkit.models.pseudo_label_head.PseudoLabelHead`, or ``k -> (frames, k)`` of
                               frames the model already selected (e.g. the masked ones; labels and ``span_mask`` then
                               ``(frames,)``)
    ``out["span_mask"]``       (batch, frames) bool            True on masked frames
                                                               (see :mod:`serkit.augment.masking`); needed only when
                                                               ``masked_only``
    ``batch["pseudo_labels"]`` dict ``k -> (batch, frames)`` long, cluster index, -1 on padding / unlabelled frames
                               (``out["pseudo_labels"]`` wins when the model returns them cropped to its frames)
Dict keys may be ints or their strings (``64`` or ``"64"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from serkit.losses.base import register_loss


def _by_int(d: Mapping) -> dict[int, torch.Tensor]:
    return {int(k): v for k, v in d.items()}


@register_loss("pseudo_label_ce")
class PseudoLabelCE(nn.Module):
    """Mean over scales of the CE over selected frames: labelled (label >= 0) and, if ``masked_only``, masked.

    ``masked_only=True`` (default) is HuBERT's masked-prediction loss (its alpha = 1); ``False`` scores every
    labelled frame. A scale with no selected frame contributes 0 (with a gradient path).

    Args:
        masked_only: score masked frames only.
        scale_weights: ``{k: weight}`` (normalised to sum 1); default equal weights.
        logits_key, labels_key, mask_key: keys in ``out`` / ``batch`` / ``out``.
    """

    def __init__(self, masked_only: bool = True, scale_weights: Mapping | None = None,
                 logits_key: str = "pseudo_logits", labels_key: str = "pseudo_labels", mask_key: str = "span_mask"):
        super().__init__()
        self.masked_only = masked_only
        self.scale_weights = None if scale_weights is None else {int(k): float(w) for k, w in scale_weights.items()}
        self.logits_key, self.labels_key, self.mask_key = logits_key, labels_key, mask_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        logits = _by_int(out[self.logits_key])
        labels = _by_int(out[self.labels_key] if self.labels_key in out else batch[self.labels_key])
        missing = sorted(set(logits) - set(labels))
        if missing:
            raise KeyError(f"pseudo_label_ce: no batch[{self.labels_key!r}] for scales {missing}")
        span = None
        if self.masked_only:
            if self.mask_key not in out:
                raise KeyError(f"pseudo_label_ce: masked_only needs out[{self.mask_key!r}] (batch, frames) bool; "
                               f"set masked_only: false to score all frames")
            span = out[self.mask_key].bool()
        weights = self.scale_weights or {k: 1.0 for k in logits}
        total_w = sum(weights.get(k, 0.0) for k in logits)
        total = None
        for k, lg in logits.items():
            w = weights.get(k, 0.0) / total_w if total_w else 0.0
            lab = labels[k].to(lg.device).long()
            if lab.shape != lg.shape[:-1]:
                raise ValueError(f"pseudo_label_ce: k={k} labels {tuple(lab.shape)} vs logits frames "
                                 f"{tuple(lg.shape[:-1])}")
            sel = lab >= 0
            if span is not None:
                if span.shape != sel.shape:
                    raise ValueError(f"pseudo_label_ce: {self.mask_key} {tuple(span.shape)} vs labels "
                                     f"{tuple(sel.shape)}")
                sel = sel & span.to(sel.device)
            if sel.any():
                term = nn.functional.cross_entropy(lg[sel].float(), lab[sel])
            else:
                term = lg.sum() * 0.0
            total = w * term if total is None else total + w * term
        return total
