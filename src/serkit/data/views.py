"""Utterance-level multi-view embeddings: one fixed vector per utterance and view, read from feature stores.

A *view* is one encoder's utterance embedding (IF-MVSE: the mean-pooled final hidden state of Whisper, WavLM,
HuBERT ...). The feature store already holds per-layer pooled statistics (mean then std over frames, see
:meth:`serkit.features.store.FeatureStore.pooled`), so a view is a slice of those:

* ``pooling="mean"``  -> the frame mean of the chosen layer, ``(dim,)``
* ``pooling="stats"`` -> mean and standard deviation, ``(2*dim,)`` (e.g. log-mel filterbank statistics)
* ``pooling="auto"``  -> ``stats`` for filterbank encoders (``fbank-*``), ``mean`` for neural encoders

:class:`ViewDataset` yields batch dicts in the shape the rest of serkit expects (``emotion``, ``speaker``,
``gender``, ``targets``) plus ``views: {name: (B, dim)}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from serkit.errors import ConfigError

POOLINGS = ("mean", "stats", "auto")


def resolve_pooling(pooling: str, encoder_id: str) -> str:
    """``auto`` -> ``stats`` for ``fbank*`` encoders, ``mean`` otherwise; ``mean`` / ``stats`` pass through."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if pooling == "auto":
        return "stats" if str(encoder_id).lower().startswith("fbank") else "mean"
    return pooling


def view_matrix(store, ids: Sequence[str], layer: int = -1, pooling: str = "mean") -> np.ndarray:
    """``(len(ids), dim)`` float32 (``mean``) or ``(len(ids), 2*dim)`` (``stats``) of one stored layer.

    ``layer`` indexes the store's layers (axis 0 of :meth:`~serkit.features.store.FeatureStore.pooled`), so ``-1`` is
    the last stored hidden state (the final layer when the store holds ``layers: all``).
    """
    if pooling not in ("mean", "stats"):
        raise ConfigError(f"view_matrix: pooling must be 'mean' or 'stats', got {pooling!r}")
    n_layers = len(store.layers)
    if not -n_layers <= layer < n_layers:
        raise ConfigError(f"view layer {layer} is out of range for a store with {n_layers} layer(s) ({store.root})")
    mat = store.pooled_matrix([str(i) for i in ids], layer=layer).astype(np.float32)
    if pooling == "mean":
        mat = mat[:, : mat.shape[1] // 2]
    return np.ascontiguousarray(mat)


class Standardizer:
    """Per-dimension z-scoring fitted on training rows only (std floored at ``eps``)."""

    def __init__(self, eps: float = 1e-6):
        self.eps = eps
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(0)
        self.std = np.maximum(x.std(0), self.eps)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("Standardizer: call fit() first")
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


class ViewDataset(Dataset):
    """Items ``{"views": {name: (dim,)}, "emotion", "speaker", "gender"[, "targets"]}`` for ``torch``'s default
    collate (which stacks the nested dict into ``views: {name: (B, dim)}``).

    Args:
        views: ``{name: (N, dim) array}``, rows aligned with ``enc``.
        enc: :meth:`serkit.data.labels.LabelMap.encode` of the same rows.
    """

    def __init__(self, views: Mapping[str, np.ndarray], enc: Mapping[str, np.ndarray]):
        n = {len(v) for v in views.values()} | {len(enc["emotion"])}
        if len(n) != 1:
            raise ValueError(f"ViewDataset: views and labels have different lengths {sorted(n)}")
        self.views = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in views.items()}
        self.labels = {k: torch.as_tensor(np.array(v)) for k, v in enc.items()}
        self.enc = dict(enc)

    def __len__(self) -> int:
        return len(self.labels["emotion"])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.labels.items()}
        item["views"] = {k: v[i] for k, v in self.views.items()}
        return item
