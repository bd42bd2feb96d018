"""Frame-level attention module (FLAM) of the MLL paper (Interspeech 2025, Section 2.3, Eq. 5).

``F' = F + MSA(F)`` (multi-head self-attention with a residual; padded frames are masked out as keys), then
attention pooling ``alpha_t = softmax_t(f'_t . w)`` over the real frames and ``f = sum_t alpha_t f'_t`` with a
learned vector ``w``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["FLAM", "AttentionPooling", "FLAMOutput"]


def _check_mask(frames: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """A (batch, frames) bool mask, True on real frames (all True when ``frame_mask`` is None)."""
    if frames.dim() != 3:
        raise ValueError(f"expected frames of shape (batch, frames, dim), got {tuple(frames.shape)}")
    if frame_mask is None:
        return torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    if frame_mask.shape != frames.shape[:2]:
        raise ValueError(f"frame_mask shape {tuple(frame_mask.shape)} does not match frames {tuple(frames.shape[:2])}")
    return frame_mask.to(device=frames.device, dtype=torch.bool)


class AttentionPooling(nn.Module):
    """Attention pooling (Eq. 5): ``alpha_t = softmax_t(f'_t . w)`` over real frames, ``f = sum_t alpha_t f'_t``.

    Args:
        dim: feature dimension D; ``w`` is a learned ``(D,)`` vector (normal init, std ``D**-0.5``).

    ``forward(frames (B, T, D), frame_mask (B, T) bool or None) -> pooled (B, D)`` (the masked-pooling interface of
    :mod:`serkit.models.pooling`), or ``(pooled, alpha (B, T))`` with ``return_alpha=True``. Padded frames
    (mask False) get ``alpha = 0`` exactly and their values never reach the output; an utterance with no real frame
    pools to zeros with all-zero ``alpha``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"AttentionPooling: dim must be positive, got {dim}")
        self.dim = self.output_size = dim
        self.w = nn.Parameter(torch.randn(dim) * dim ** -0.5)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None, return_alpha: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mask = _check_mask(frames, frame_mask)
        frames = frames.masked_fill(~mask.unsqueeze(-1), 0.0)  # padded values (even inf/nan) cannot leak
        scores = frames @ self.w.to(frames.dtype)  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=-1) * mask  # empty rows: uniform softmax, zeroed by the mask
        pooled = torch.einsum("bt,btd->bd", alpha, frames)
        return (pooled, alpha) if return_alpha else pooled


class FLAMOutput(NamedTuple):
    """``pooled`` (B, D) utterance feature f; ``frames`` (B, T, D) F' = F + MSA(F); ``alpha`` (B, T) weights."""

    pooled: torch.Tensor
    frames: torch.Tensor
    alpha: torch.Tensor


class FLAM(nn.Module):
    """Frame-level attention module: ``F' = F + MSA(F)`` then :class:`AttentionPooling` (Section 2.3, Eq. 5).

    Args:
        dim: feature dimension D of the encoder frames.
        num_heads: attention heads (paper: 16); must divide ``dim`` (``ValueError`` otherwise).
        dropout: attention dropout.

    ``forward(frames (B, T, D), frame_mask (B, T) bool True = real, return_all=False)`` returns the pooled
    ``(B, D)`` feature, or a :class:`FLAMOutput` ``(pooled, frames F', alpha)`` when ``return_all``. Padded frames
    are excluded as attention keys (``key_padding_mask``) and from pooling, so their values do not change the
    pooled output or F' at real frames (F' at padded frames is meaningless).
    """

    def __init__(self, dim: int, num_heads: int = 16, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"FLAM: num_heads={num_heads} must divide dim={dim} (both positive)")
        self.dim, self.num_heads = dim, num_heads
        self.output_size = dim
        self.msa = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.pool = AttentionPooling(dim)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None, return_all: bool = False
                ) -> torch.Tensor | FLAMOutput:
        mask = _check_mask(frames, frame_mask)
        if frames.shape[-1] != self.dim:
            raise ValueError(f"FLAM: expected feature dim {self.dim}, got {frames.shape[-1]}")
        x = frames.masked_fill(~mask.unsqueeze(-1), 0.0)
        # key_padding_mask is True where a key is ignored; rows without any real frame would give NaN, so let them
        # attend everywhere (their output is dropped by the pooling mask anyway).
        empty = ~mask.any(dim=1, keepdim=True)
        key_padding = ~(mask | empty)
        attn, _ = self.msa(x, x, x, key_padding_mask=key_padding, need_weights=False)
        refined = x + attn  # F' = F + MSA(F)
        pooled, alpha = self.pool(refined, mask, return_alpha=True)
        if return_all:
            return FLAMOutput(pooled, refined, alpha)
        return pooled
