"""HuBERT / wav2vec 2.0 style span masking of frame sequences (any encoder, after its front-end).

HuBERT (Hsu et al. 2021, Sec. IV-C): "randomly select p% of the timesteps as start indices, and spans of l are
masked", p = 8%, l = 10; masked frames are replaced by one learned embedding (wav2vec 2.0, Baevski et al. 2020).
GMP-ATL (Pan et al., Interspeech 2024, Sec. 3.2) keeps this masking when retraining on its pseudo-labels.

Per utterance with ``L`` real frames (the sampling follows fairseq's ``compute_mask_indices``):

* number of spans ``n = max(min_masks, floor(mask_prob * L + u))``, ``u ~ U[0, 1)`` (stochastic rounding, so
  E[n] = mask_prob * L when above ``min_masks``), capped at the number of allowed starts;
* starts are drawn without replacement among real frames from which a whole span fits before the last real frame
  (among all real frames when the utterance is shorter than a span); spans may overlap, so the masked fraction
  is about ``1 - (1 - mask_prob)^span`` (57% for HuBERT's 0.08 and 10);
* the mask is finally ANDed with ``frame_mask``: padding is never masked and no span starts on padding.
"""

from __future__ import annotations

import torch
from torch import nn


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def compute_span_mask(shape: tuple[int, int], mask_prob: float = 0.08, span: int = 10, min_masks: int = 2,
                      frame_mask: torch.Tensor | None = None,
                      generator: torch.Generator | int | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Sample span masks.

    Args:
        shape: ``(batch, frames)``.
        mask_prob: per-frame probability of starting a span (HuBERT's p = 0.08).
        span: span length in frames (HuBERT's l = 10; 200 ms at 50 frames/s).
        min_masks: least number of spans per utterance (fewer only if it has fewer allowed starts).
        frame_mask: (batch, frames) bool, True on real frames; None means all frames are real.
        generator: a CPU ``torch.Generator`` or an int seed, for reproducible masks; None uses the global RNG.
        device: device of the result (default: that of ``frame_mask``, else CPU).

    Returns:
        (batch, frames) bool, True on masked frames.
    """
    batch, frames = shape
    if span < 1:
        raise ValueError(f"compute_span_mask: span must be >= 1, got {span}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"compute_span_mask: mask_prob must be in [0, 1], got {mask_prob}")
    if device is None:
        device = frame_mask.device if frame_mask is not None else "cpu"
    if frame_mask is None:
        real = torch.ones(batch, frames, dtype=torch.bool)
    else:
        if tuple(frame_mask.shape) != (batch, frames):
            raise ValueError(f"compute_span_mask: frame_mask has shape {tuple(frame_mask.shape)}, "
                             f"expected {(batch, frames)}")
        real = frame_mask.detach().to("cpu", torch.bool)
    gen = _generator(generator)
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for b in range(batch):
        idx = real[b].nonzero().flatten()
        if idx.numel() == 0:
            continue
        last = int(idx[-1])
        starts = idx[idx + span - 1 <= last]
        if starts.numel() == 0:
            starts = idx
        u = float(torch.rand((), generator=gen))
        n = max(min_masks, int(mask_prob * idx.numel() + u))
        n = min(n, starts.numel())
        if n == 0:
            continue
        chosen = starts[torch.randperm(starts.numel(), generator=gen)[:n]]
        pos = (chosen[:, None] + torch.arange(span)[None, :]).flatten()
        mask[b, pos[pos < frames]] = True
    return (mask & real).to(device)


def apply_span_mask(frames: torch.Tensor, mask: torch.Tensor, mask_embedding: torch.Tensor) -> torch.Tensor:
    """Replace masked frames by ``mask_embedding``.

    Args:
        frames: (batch, frames, dim).
        mask: (batch, frames) bool, True where a frame is replaced.
        mask_embedding: (dim,), usually a learned parameter.

    Returns:
        (batch, frames, dim), differentiable in ``frames`` (unmasked) and ``mask_embedding`` (masked).
    """
    if mask.shape != frames.shape[:2]:
        raise ValueError(f"apply_span_mask: mask {tuple(mask.shape)} does not match frames "
                         f"{tuple(frames.shape[:2])}")
    if mask_embedding.shape != frames.shape[-1:]:
        raise ValueError(f"apply_span_mask: mask_embedding {tuple(mask_embedding.shape)} does not match frame "
                         f"width {frames.shape[-1]}")
    return torch.where(mask[..., None].to(frames.device), mask_embedding.to(frames.dtype), frames)


class SpanMasker(nn.Module):
    """Learned mask embedding + :func:`compute_span_mask`; masks only in training mode.

    ``forward(frames (B, T, D), frame_mask (B, T) bool | None) -> (frames', span_mask (B, T) bool)``; in eval
    mode (or with ``mask_prob == 0`` and ``min_masks == 0``) frames pass unchanged and the mask is all False.
    The embedding is initialised uniform in [0, 1) as in fairseq's HuBERT / wav2vec 2.0.
    """

    def __init__(self, dim: int, mask_prob: float = 0.08, span: int = 10, min_masks: int = 2):
        super().__init__()
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.mask_prob, self.span, self.min_masks = mask_prob, span, min_masks

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None,
                generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = frames.shape[:2]
        if not self.training or (self.mask_prob == 0 and self.min_masks == 0):
            return frames, torch.zeros(batch, length, dtype=torch.bool, device=frames.device)
        mask = compute_span_mask((batch, length), self.mask_prob, self.span, self.min_masks, frame_mask,
                                 generator, device=frames.device)
        return apply_span_mask(frames, mask, self.mask_embedding), mask
