"""Frame-level helpers for models on cached frames: masked average pooling over time, crop / pad to a length.

Shapes: features ``(batch, layers, frames, dim)`` or ``(batch, frames, dim)``, masks ``(batch, frames)`` (True =
real frame).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from serkit.errors import ConfigError

PAD_MODES = ("mask", "zeros")


def pool_frames(features: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked average pooling over time by ``k``: ``features (B, L, T, D)`` (or ``(B, T, D)``), ``mask (B, T)``
    -> ``(B, L, ceil(T/k), D)``, ``mask (B, ceil(T/k))`` (a pooled frame is real when any of its frames is)."""
    squeeze = features.dim() == 3
    x = features.unsqueeze(1) if squeeze else features
    b, _, t, _ = x.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    pad = (-t) % k
    m = mask.to(x.dtype)
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        m = F.pad(m, (0, pad))
    tt = x.shape[2] // k
    x = x * m[:, None, :, None]
    xs = x.reshape(b, x.shape[1], tt, k, x.shape[-1]).sum(3)
    ms = m.reshape(b, tt, k).sum(2)
    xs = xs / ms.clamp_min(1.0)[:, None, :, None]
    out_mask = ms > 0
    return (xs.squeeze(1) if squeeze else xs), out_mask


def crop_pad_frames(x: torch.Tensor, mask: torch.Tensor | None, max_frames: int | None, pad: str = "mask",
                    train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``x (B, T, D)`` to at most ``max_frames`` real frames per row (random window when ``train``, else the
    centre) and, with ``pad="zeros"``, pad every row to exactly ``max_frames`` zero frames marked real.
    Returns ``(x (B, T', D), mask (B, T'))``; ``max_frames=None`` returns the input (mask filled in)."""
    b, t, _ = x.shape
    if mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    mask = mask.bool()
    if not max_frames:
        return x, mask
    n = int(max_frames)
    lengths = mask.sum(1)
    if t > n:
        over = (lengths - n).clamp_min(0)
        if train:
            starts = (torch.rand(b, device=x.device) * (over + 1).to(torch.float32)).floor().long()
            starts = torch.minimum(starts, over)
        else:
            starts = over // 2
        idx = (starts[:, None] + torch.arange(n, device=x.device)[None, :]).clamp_max(t - 1)
        x = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))
        mask = torch.gather(mask, 1, idx) & (torch.arange(n, device=x.device)[None, :] < lengths[:, None])
        t = n
    if pad == "zeros":
        x = x.masked_fill(~mask[:, :, None], 0.0)
        if t < n:
            x = F.pad(x, (0, 0, 0, n - t))
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    return x, mask


class FrameStandardizer(torch.nn.Module):
    """Every layer and dimension of cached frames z-scored with the training set's statistics: the single-clip
    counterpart of speaker normalisation (one statistic for everyone, fitted on the training utterances only, so a
    clip needs nothing but itself). The statistics are buffers: a saved model, ``predict``, ``serve`` and the ONNX
    graph apply them unchanged. Before :meth:`fit` it passes frames through (mean 0, std 1).

    Args:
        layers, dim: the frames' ``(layers, dim)``.
    """

    def __init__(self, layers: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(layers, dim))
        self.register_buffer("std", torch.ones(layers, dim))

    @torch.no_grad()
    def fit(self, chunks, min_std: float = 1e-4) -> None:
        """Mean and std over every real frame of ``chunks``: ``(features (n, layers, frames, dim), mask (n, frames)
        or None)`` pairs (True = real frame), accumulated in float64, so the training set never needs to be in
        memory at once."""
        total = torch.zeros(2, *self.mean.shape, dtype=torch.float64)
        count = 0.0
        for features, mask in chunks:
            x = features.double()
            m = torch.ones(x.shape[0], x.shape[2], dtype=torch.float64) if mask is None else mask.double()
            w = m[:, None, :, None]
            total[0] += (x * w).sum((0, 2))
            total[1] += (x * x * w).sum((0, 2))
            count += float(m.sum())
        mean = total[0] / max(count, 1.0)
        var = (total[1] / max(count, 1.0) - mean * mean).clamp_min(0.0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp_min(min_std).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, layers, frames, dim)`` -> the same, standardised (padding frames too; masks still apply)."""
        return (features - self.mean[None, :, None, :].to(features.dtype)) / self.std[None, :, None, :].to(
            features.dtype)


#: ``model.input_norm`` values of models on cached frames (HCLD, MLL)
INPUT_NORMS = ("none", "standardize")


class StandardizedFrameInput:
    """Mixin for a model on cached frames ``batch["features"]`` ``(B, layers, T, dim)`` with the option
    ``model.input_norm`` (``none`` or ``standardize``: a :class:`FrameStandardizer` fitted by :meth:`fit_input` on
    the whole training set before training, as the training loop does for every model whose ``fits_input`` is
    true). Call :meth:`init_input_norm` in ``__init__`` and :meth:`standardized` on the features in ``forward``."""

    input_norm: FrameStandardizer | None

    def init_input_norm(self, model: str, input_norm: str, layers: int, dim: int) -> None:
        if input_norm not in INPUT_NORMS:
            raise ConfigError(f"model {model}: input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = FrameStandardizer(layers, dim) if input_norm == "standardize" else None

    @property
    def fits_input(self) -> bool:
        """Whether :meth:`fit_input` has statistics to fit before training (``input_norm: standardize``)."""
        return self.input_norm is not None

    @torch.no_grad()
    def fit_input(self, batches) -> None:
        """Fit the input standardisation on the training set, given as one collated batch or an iterable of them
        (``features`` ``(n, layers, T, dim)``, ``frame_mask`` ``(n, T)``; the training loop passes chunks,
        :attr:`fits_input_in_chunks`)."""
        if self.input_norm is not None:
            batches = [batches] if isinstance(batches, dict) else batches
            self.input_norm.fit((b["features"], b.get("frame_mask")) for b in batches)

    #: :meth:`fit_input` takes the training set chunk by chunk (the training loop never collates it whole)
    fits_input_in_chunks = True

    def standardized(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.input_norm is None else self.input_norm(features)
