"""LCL: HCLD's label-based contrastive loss (Li et al., ICASSP 2025, Sec. III-D2, after the anchor loss [24]).

Text embeddings ``E`` of the emotion label words (:func:`serkit.models.label_text.embed_label_texts`) are class
anchors in a SupCon-style loss against the L2-normalised emotion features ``X^_e``:

    L_Label = - 1/|I| sum_{i in I} 1/|P(i)| sum_{p in P(i)}
                  log( exp(E^[i] . X^_e[p] / tau) / sum_{a in A(i)} exp(E^[i] . X^_e[a] / tau) )

where ``E^[i]`` is the normalised (projected) text embedding of sample i's class, ``P(i)`` the batch samples of
i's class (i included: the anchor is the label text, not X_e[i]) and ``A(i)`` all batch samples. Two choices the
paper leaves open, documented here: the sum over anchors is averaged (``1/|I|``, as SupCon implementations do, so
the scale does not grow with the batch), and when the text dimension differs from X_e's, a learned bias-free
``nn.Linear(text_dim, feature_dim)`` projects E into X_e's space (pass ``feature_dim``; with
``project=True`` the projection is used even when the dims agree). The projection is a parameter of this loss
module: the trainer must optimise the objective's parameters too. The label embeddings are a fixed buffer.

``tau`` default 0.07: the paper gives no value; 0.07 is the SupCon reference temperature (Khosla et al., 2020),
which LCL is "based on".
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from serkit.errors import ConfigError
from serkit.losses.base import register_loss


def label_contrastive_loss(features: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 0.07) -> torch.Tensor:
    """LCL on ``features (B, d)`` (normalised here), class ``anchors (C, d)`` (normalised here) and ``labels (B,)``
    long in ``[0, C)``. Returns the mean over anchors i of ``-1/|P(i)| sum_p log softmax_a(E^[i].X^[a]/tau)[p]``."""
    x = F.normalize(features, dim=-1)
    e = F.normalize(anchors, dim=-1)
    logits = e[labels] @ x.t() / temperature  # (B anchors, B samples)
    logp = torch.log_softmax(logits, dim=1)
    pos = (labels[:, None] == labels[None, :]).to(logp.dtype)  # P(i), includes i
    return (-(logp * pos).sum(1) / pos.sum(1)).mean()


@register_loss("lcl")
class LabelContrastive(nn.Module):
    """HCLD label-based contrastive loss on ``out[feature_key]`` (default ``"emotion_features"``, ``(B, d)``) with
    ``batch[label_key]`` (default ``"emotion"``, ``(B,)`` long; ``< 0`` dropped; with mixup's
    ``batch["emotion_soft"]`` present, its argmax class).

    ``label_embeddings``: ``(C, text_dim)`` tensor/array, or a path to a ``.pt``/``.npy`` file holding one;
    or give ``labels`` (the C class names in index order) and ``text_model`` to embed them with
    :func:`serkit.models.label_text.embed_label_texts`. ``feature_dim``: X_e's size; needed when it differs from
    ``text_dim`` (a learned linear projection is created). ``temperature`` tau (default 0.07).
    Returns zero (with grad) when no sample has a known label.
    """

    def __init__(self, label_embeddings=None, labels: list[str] | None = None, text_model: str = "roberta-base",
                 feature_dim: int | None = None, temperature: float = 0.07, project: bool = False,
                 feature_key: str = "emotion_features", label_key: str = "emotion",
                 cache_dir: str | None = None):
        super().__init__()
        if label_embeddings is None:
            if not labels:
                raise ConfigError("lcl: give 'label_embeddings' or 'labels' (class names, in index order)")
            from serkit.models.label_text import embed_label_texts

            emb = embed_label_texts(list(labels), model=text_model, cache_dir=cache_dir)
        elif isinstance(label_embeddings, str | Path):
            path = Path(label_embeddings)
            if path.suffix == ".npy":
                import numpy as np

                emb = torch.from_numpy(np.load(path))
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
                emb = obj["embeddings"] if isinstance(obj, dict) else obj
        else:
            emb = torch.as_tensor(label_embeddings)
        emb = emb.detach().float()
        if emb.dim() != 2:
            raise ConfigError(f"lcl: label embeddings must be (classes, dim), got {tuple(emb.shape)}")
        if temperature <= 0:
            raise ConfigError(f"lcl: temperature must be > 0, got {temperature}")
        self.register_buffer("label_embeddings", emb)
        self.temperature = float(temperature)
        self.feature_key, self.label_key = feature_key, label_key
        text_dim = emb.shape[1]
        self.feature_dim = int(feature_dim) if feature_dim is not None else text_dim
        self.projection = (nn.Linear(text_dim, self.feature_dim, bias=False)
                           if project or self.feature_dim != text_dim else None)

    def anchors(self) -> torch.Tensor:
        """Class anchors in X_e's space, ``(C, feature_dim)`` (not yet normalised)."""
        e = self.label_embeddings
        return self.projection(e) if self.projection is not None else e

    def forward(self, out: dict, batch: dict) -> torch.Tensor:
        x = out[self.feature_key].float()
        if self.label_key == "emotion" and "emotion_soft" in batch:  # mixup: dominant class
            y = batch["emotion_soft"].argmax(dim=-1).to(x.device)
        else:
            y = batch[self.label_key].long().to(x.device)
        if x.shape[-1] != self.feature_dim:
            raise ConfigError(f"lcl: {self.feature_key} has dim {x.shape[-1]} but the loss was built for "
                              f"feature_dim={self.feature_dim}; set 'feature_dim: {x.shape[-1]}'")
        keep = y >= 0
        if not bool(keep.any()):
            return x.sum() * 0.0
        x, y = x[keep], y[keep]
        if int(y.max()) >= self.label_embeddings.shape[0]:
            raise ValueError(f"lcl: label {int(y.max())} out of range for {self.label_embeddings.shape[0]} classes")
        return label_contrastive_loss(x, self.anchors().to(x.dtype), y, self.temperature)
