"""Nuisance attribute projection (NAP): a fitted feature-stage operation at a head's input that removes the
directions in which the training speakers differ *within* an emotion.

Fitted on a fold's training utterances only (labels of training speakers; nothing of a test speaker), saved with
the head's weights as buffers, so `serkit predict`, `serve` and the ONNX graph apply it unchanged. On features
``x`` ``(batch, dim)``: standardise with the training mean / std, subtract the projection on the ``rank``
leading directions ``U`` ``(dim, rank)`` of the speaker offsets, and return to the original units::

    z = (x - mean) / scale;    z' = z - (z U) U^T;    x' = z' * scale + mean

The offsets are, per (speaker, emotion) cell of the training data, the cell's mean of ``z`` minus the mean of
its emotion's cells: what a speaker adds to an emotion. With ``rank`` 0 the module is the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class NuisanceProjection(nn.Module):
    """``forward(x (batch, dim)) -> (batch, dim)``; :meth:`fit` sets the buffers from training data."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        if rank < 0:
            raise ValueError(f"nuisance rank must be >= 0, got {rank}")
        self.rank = int(rank)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("basis", torch.zeros(dim, self.rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return x
        z = (x - self.mean) / self.scale
        z = z - (z @ self.basis) @ self.basis.T
        return z * self.scale + self.mean

    @torch.no_grad()
    def fit(self, x: torch.Tensor, speaker: torch.Tensor, emotion: torch.Tensor) -> int:
        """Fit on training features ``x`` ``(n, dim)`` with their ``speaker`` and ``emotion`` ids ``(n,)``
        (float64 arithmetic). Returns the rank used: at most the number of offsets minus the number of emotions
        (their span), so a small training set keeps only the directions it has."""
        if self.rank == 0:
            return 0
        x = x.double()
        mean = x.mean(0)
        scale = x.std(0, unbiased=False).clamp_min(1e-8)
        z = (x - mean) / scale
        offsets = []
        for e in torch.unique(emotion):
            in_e = emotion == e
            cells = [z[in_e & (speaker == s)].mean(0) for s in torch.unique(speaker[in_e])]
            if len(cells) > 1:
                cells = torch.stack(cells)
                offsets.append(cells - cells.mean(0))
        basis = torch.zeros(x.shape[1], self.rank, dtype=torch.float64)
        used = 0
        if offsets:
            offsets = torch.cat(offsets)
            _, sv, vh = torch.linalg.svd(offsets, full_matrices=False)
            used = int(min(self.rank, (sv > sv[0] * 1e-6).sum().item()))
            basis[:, :used] = vh[:used].T
        self.mean.copy_(mean.to(self.mean.dtype))
        self.scale.copy_(scale.to(self.scale.dtype))
        self.basis.copy_(basis.to(self.basis.dtype))
        return used
