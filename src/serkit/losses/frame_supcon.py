"""Frame-level supervised contrastive loss of the MLL paper (Interspeech 2025, Eqs. 9-10)."""

from __future__ import annotations

import torch
from torch import nn

from serkit.losses.base import register_loss
from serkit.losses.supcon import dominant_class, supcon_loss


def context_broadcast(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Eq. (9): ``h~_t = (h_t + mean_m h_m) / 2`` with the mean over each utterance's real frames.

    ``frames`` (B, T, d), ``frame_mask`` (B, T) bool True on real frames -> (B, T, d) (padded rows meaningless).
    """
    m = frame_mask.unsqueeze(-1).to(frames.dtype)
    mean = (frames * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return 0.5 * (frames + mean)


@register_loss("frame_supcon")
class FrameSupCon(nn.Module):
    """SupCon over all real frames of the batch (Eq. 10) after context broadcasting (Eq. 9).

    Uses ``out[feature_key]`` (batch, frames, dim) (MLL: the 64-d frame projection of F') and ``out[mask_key]``
    (batch, frames) bool (all frames real when absent). Every real frame carries its utterance's dominant emotion
    class (argmax of ``emotion_soft`` under mixup); positives of an anchor frame are the other frames of that class,
    from the same or other utterances. Features are L2-normalised inside :func:`serkit.losses.supcon.supcon_loss`;
    anchors without positives are skipped (the mean is over anchors with positives, not over B*T as Eq. 10 writes).

    Args:
        temperature: tau (default 0.07).
        max_frames: at most this many real frames (drawn at random with torch's global RNG) enter the
            (N, N) similarity matrix, to bound memory; ``None`` or 0 keeps all.
        context_broadcast: apply Eq. (9) before the loss (default True).
    """

    def __init__(self, temperature: float = 0.07, max_frames: int | None = 2048, context_broadcast: bool = True,
                 feature_key: str = "frame_projection", mask_key: str = "frame_mask"):
        super().__init__()
        self.temperature = float(temperature)
        self.max_frames = int(max_frames) if max_frames else None
        self.context_broadcast = bool(context_broadcast)
        self.feature_key, self.mask_key = feature_key, mask_key

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        h = out[self.feature_key]
        if h.dim() != 3:
            raise ValueError(f"frame_supcon: out[{self.feature_key!r}] must be (batch, frames, dim), got "
                             f"{tuple(h.shape)}")
        mask = out.get(self.mask_key)
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        if self.context_broadcast:
            h = context_broadcast(h, mask)
        labels = dominant_class(batch).to(h.device)
        feats = h[mask]  # (N, d) real frames, utterance-major order
        frame_labels = labels.unsqueeze(1).expand(mask.shape)[mask]  # (N,)
        if self.max_frames is not None and feats.shape[0] > self.max_frames:
            keep = torch.randperm(feats.shape[0], device=feats.device)[: self.max_frames]
            feats, frame_labels = feats[keep], frame_labels[keep]
        return supcon_loss(feats, frame_labels, self.temperature)
