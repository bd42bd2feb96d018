"""BiLSTM utterance head with emotion and gender outputs (GMP-ATL stage 1, Pan et al., Interspeech 2024).

Sec. 3.1 / Fig. 1(a): HuBERT frames -> bi-directional LSTM -> mean average pooling (MAP) -> linear projection
module (two linear layers and one ReLU) -> emotion and gender classifiers, trained with
``L = alpha_e L_Emo + (1 - alpha_e) L_Gender`` (Eq. 1, alpha_e = 0.9: objective terms ``cross_entropy`` weight 0.9
and ``gender_ce`` weight 0.1).
"""

from __future__ import annotations

import torch
from torch import nn


class BiLSTMHead(nn.Module):
    """BiLSTM -> masked mean pooling -> ``Linear -> ReLU -> Linear`` projection -> emotion / gender heads.

    Padded frames do not reach the LSTM (packed sequences; lengths = number of True in ``frame_mask``, which
    must be right-padded) nor the mean.

    Args:
        input_dim: frame feature width.
        hidden: LSTM hidden size per direction (pooled width ``2 * hidden``).
        num_classes: emotion classes.
        num_genders: gender classes (0: no gender head).
        proj_dim: width of the projection module and of ``embedding``.
        num_layers, dropout: of the LSTM (dropout between LSTM layers).

    ``forward(frames (batch, frames, input_dim), frame_mask (batch, frames) bool | None)`` returns
    ``{"logits": (batch, classes), "gender_logits": (batch, genders), "embedding": (batch, proj_dim)}``.
    """

    def __init__(self, input_dim: int, hidden: int = 256, num_classes: int = 4, num_genders: int = 2,
                 proj_dim: int = 256, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.projection = nn.Sequential(nn.Linear(2 * hidden, proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim))
        self.emotion = nn.Linear(proj_dim, num_classes)
        self.gender = nn.Linear(proj_dim, num_genders) if num_genders else None

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        batch, length = frames.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(batch, length, dtype=torch.bool, device=frames.device)
        if torch.compiler.is_exporting():  # the exported graph scores one unpadded window: nothing to pack
            h, _ = self.lstm(frames)
        else:
            lengths = frame_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
            h, _ = self.lstm(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=length)
        m = frame_mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        emb = self.projection(pooled)
        out = {"logits": self.emotion(emb), "embedding": emb}
        if self.gender is not None:
            out["gender_logits"] = self.gender(emb)
        return out
