"""One signature for every loss and the registration decorator (:mod:`serkit.losses.objective` builds them).

Every loss is an ``nn.Module`` called as ``loss(out, batch) -> scalar tensor`` where

``out`` (what a model's forward returns, a dict of tensors; keys a loss does not need may be absent):
    ``logits``            (batch, classes)      emotion logits
    ``prediction``        (batch, attributes)   regression outputs (arousal, valence, dominance order of the task)
    ``embedding``         (batch, dim)          utterance embedding (pooled)
    ``frames``            (batch, frames, dim)  frame-level features after the downstream's frame layers
    ``frame_mask``        (batch, frames) bool  True on real frames
    ``emotion_features``  (batch, dim)          HCLD emotion branch X_e
    ``speaker_features``  (batch, dim)          HCLD speaker branch X_s
    ``speaker_logits``    (batch, speakers)     auxiliary heads, when switched on
    ``gender_logits``     (batch, 2)
    ``projection``        (batch, dim)          e.g. MLL's 64-d projection for the center loss
    ``frame_projection``  (batch, frames, dim)  e.g. MLL's 64-d frame projection for frame-level SupCon

``batch`` (what the data loader yields, a dict):
    ``emotion``       (batch,) long         class index
    ``emotion_soft``  (batch, classes)      soft labels (mixup); when present, classification losses use it
    ``speaker``       (batch,) long         speaker index within the training set (-1 unknown)
    ``gender``        (batch,) long         0 female, 1 male (-1 unknown)
    ``targets``       (batch, attributes)   regression targets
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Decorator: make a loss class constructible by ``name`` from a config."""

    def deco(cls):
        _LOSSES[name] = cls
        return cls

    return deco


def class_targets(out: dict, batch: dict, num_classes: int) -> torch.Tensor:
    """Soft targets (batch, classes): ``batch['emotion_soft']`` when present, else one-hot of ``emotion``."""
    if "emotion_soft" in batch:
        return batch["emotion_soft"].float()
    return nn.functional.one_hot(batch["emotion"].long(), num_classes).float()
