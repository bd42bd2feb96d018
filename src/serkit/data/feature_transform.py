"""The feature stage as one module: what a head sees of an encoder's stored hidden states.

:class:`FeatureTransform` is the per-utterance part of the feature stage (s3prl's featurizer idea): layer choice,
speaker normalisation with given statistics, frame normalisation and frame pooling. It is built once from the
config (:meth:`FeatureTransform.from_options`) and called unchanged by the training datasets
(:class:`serkit.data.features.FeatureDataset`, one item at a time through :meth:`FeatureTransform.apply`), by
:class:`serkit.Recognizer` (a batch of windows) and inside the exported ONNX graph (:mod:`serkit.export`), so the
three cannot drift apart. The part of the stage that is *fitted* on a fold's training utterances (the standardisation of
the head's input, ``input_norm``) belongs to the head and is saved with its weights.

Inputs, in the stored layout of the feature cache:

* ``level="pooled"``: ``(batch, stored_layers, 2*dim)`` per-layer frame mean then std (float32);
* ``level="frames"``: ``(batch, stored_layers, frames, dim)`` (float16 as the cache stores them, or float32).

Speaker statistics ``speaker_mean`` / ``speaker_std`` are ``(stored_layers, dim)`` or ``(batch, stored_layers,
dim)``. The order of the steps is the cache's: layer choice (only the chosen layers are normalised), speaker
normalisation (pooled: ``mean' = (mean - mu) / sd``, ``std' = std / sd``, what pooling the normalised frames
gives), then for frames ``frame_norm`` (``"layer"``: every frame layer-normalised over ``dim``, no parameters) and
``pool_frames`` (non-overlapping windows of k frames averaged; 50 Hz -> 50/k Hz). Frames are rounded to float16
where the cache rounds them (``half_frames``), so a model sees in prediction exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: ``features.frame_norm`` values
FRAME_NORMS = ("none", "layer")


class FeatureTransform(nn.Module):
    """Layer choice, speaker normalisation, frame normalisation and pooling of one view (no trainable state).

    Args:
        level: ``"pooled"`` or ``"frames"``.
        layers: positions in the stored layers to keep (None: all of them, in order).
        frame_norm: ``"none"`` or ``"layer"`` (frames only).
        pool_frames: k >= 1, frames averaged per window of k (frames only).
        half_frames: round frames to float16 after normalisation and after the frame steps, as the feature cache
            and the training datasets hold them (False for frames computed in the loop, kept in float32).
    """

    def __init__(self, level: str = "pooled", layers: Sequence[int] | None = None, frame_norm: str = "none",
                 pool_frames: int = 1, half_frames: bool = True):
        super().__init__()
        if level not in ("pooled", "frames"):
            raise ValueError(f"FeatureTransform: level must be 'pooled' or 'frames', got {level!r}")
        if frame_norm not in FRAME_NORMS:
            raise ValueError(f"FeatureTransform: frame_norm={frame_norm!r} is not one of {FRAME_NORMS}")
        self.level, self.frame_norm = level, frame_norm
        self.pool = max(1, int(pool_frames))
        self.half_frames = bool(half_frames)
        self.layers = None if layers is None else [int(i) for i in layers]

    @classmethod
    def from_options(cls, options: dict, stored_layers: int | None = None, half_frames: bool = True
                     ) -> FeatureTransform:
        """The transform of a config's ``features:`` section over a store of ``stored_layers`` hidden states
        (the layer choice resolved against it; all layers when it is None or ``features.layers`` is unset)."""
        layers = None
        spec = options.get("layers")
        if spec is not None and stored_layers:
            from serkit.encoders.featurizer import parse_layers

            idx, _ = parse_layers(spec, stored_layers)
            layers = None if idx == list(range(stored_layers)) else idx
        return cls(options.get("level") or "frames", layers, options.get("frame_norm") or "none",
                   int(options.get("pool_frames") or 1), half_frames)

    def describe(self) -> dict:
        """JSON-able description (what a model folder and results.json record)."""
        return {"level": self.level, "layers": self.layers, "frame_norm": self.frame_norm,
                "pool_frames": self.pool, "half_frames": self.half_frames}

    @property
    def frame_steps(self) -> bool:
        """Whether the transform changes frames beyond layer choice and normalisation."""
        return self.level == "frames" and (self.frame_norm != "none" or self.pool > 1)

    # -- the module ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, speaker_mean: torch.Tensor | None = None,
                speaker_std: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` pooled ``(batch, stored_layers, 2*dim)`` or frames ``(batch, stored_layers, frames, dim)`` ->
        the same with the chosen layers, normalised; frames pooled to ``ceil(frames / pool_frames)``. The
        statistics, when given, are of the stored layers (``(stored_layers, dim)`` or batched)."""
        if self.layers is not None:
            x = x[:, self.layers]
            if speaker_mean is not None:
                speaker_mean, speaker_std = speaker_mean[..., self.layers, :], speaker_std[..., self.layers, :]
        if speaker_mean is not None:
            x = self.normalize(x, speaker_mean, speaker_std)
        if self.level == "frames":
            x = self.frames(x)
        return x

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Speaker normalisation of chosen-layer features with ``(layers, dim)`` (or batched) statistics."""
        mean, std = mean.float(), std.float()
        if mean.dim() == 2:
            mean, std = mean[None], std[None]
        if self.level == "pooled":
            dim = mean.shape[-1]
            return torch.cat([(x[..., :dim].float() - mean) / std, x[..., dim:].float() / std], dim=-1)
        y = (x.float() - mean[:, :, None, :]) / std[:, :, None, :]
        return y.half() if self.half_frames else y

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """The per-frame steps on ``(batch, layers, frames, dim)``: frame normalisation, then pooling."""
        if not self.frame_steps:
            return x
        y = x.float()
        if self.frame_norm == "layer":
            y = nn.functional.layer_norm(y, y.shape[-1:])
        if self.pool > 1:
            y = pool_frames(y, self.pool)
        return y.half() if self.half_frames else y

    def pooled_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The frame mask ``(batch, frames)`` of the pooled frames ``(batch, ceil(frames / k))``."""
        if self.level != "frames" or self.pool <= 1:
            return mask
        b, t = mask.shape
        n = -(-t // self.pool)
        padded = torch.zeros(b, n * self.pool, dtype=torch.bool, device=mask.device)
        padded[:, :t] = mask
        return padded.reshape(b, n, self.pool).any(-1)

    # -- one item, as the datasets read them ---------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None,
              layers_chosen: bool = False) -> np.ndarray:
        """One item (no batch axis) as a numpy array: pooled ``(layers, 2*dim)`` float32 or frames ``(layers,
        frames, dim)`` float16 (``half_frames``) / float32. ``layers_chosen``: ``x`` holds the chosen layers
        already (the datasets read only those from the store); ``stats`` are always of the stored layers."""
        t = torch.from_numpy(np.ascontiguousarray(x))[None]
        s = None if stats is None else [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in stats]
        if layers_chosen and self.layers is not None:
            if s is not None:
                s = [a[self.layers] for a in s]
            y = self._chosen(t, s)
        else:
            y = self.forward(t, *(s or (None, None)))
        y = y[0].numpy()
        if self.level == "pooled":
            return np.asarray(y, dtype=np.float32)
        return np.asarray(y, dtype=np.float16 if self.half_frames else np.float32)

    def _chosen(self, x: torch.Tensor, stats) -> torch.Tensor:
        """:meth:`forward` on features whose layers are chosen already."""
        if stats is not None:
            x = self.normalize(x, *stats)
        return self.frames(x) if self.level == "frames" else x


def pool_frames(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average non-overlapping windows of ``k`` frames along axis -2: ``(..., T, dim)`` -> ``(..., ceil(T/k),
    dim)`` (the last window averages the frames it has). The k frames of a window are added in order, one after
    the other, so the result does not depend on a library's reduction order."""
    if k <= 1:
        return x
    t, d = x.shape[-2], x.shape[-1]
    n = -(-t // k)
    pad = n * k - t
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-2], pad, d)], dim=-2)
    w = x.reshape(*x.shape[:-2], n, k, d)
    sums = w[..., 0, :]
    for j in range(1, k):
        sums = sums + w[..., j, :]
    counts = torch.full((n,), float(k), dtype=x.dtype, device=x.device)
    if pad:
        counts[-1] = k - pad
    return sums / counts[:, None]
