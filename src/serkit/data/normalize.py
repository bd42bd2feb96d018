"""Speaker-level feature normalisation: z-score each speaker's encoder frames with that speaker's own statistics.

A standard step in speaker-independent SER (the speaker's voice shifts every feature; removing each speaker's
mean and scale leaves more of the emotion). It is unsupervised: the statistics of a speaker are the mean and
standard deviation, per layer and dimension, over all frames of that speaker's utterances, and no label is used.
For a test speaker they come from that speaker's test utterances only (transductive, like test-time adaptation):
results made with it say so (``results.json``: ``feature_normalisation``), and prediction needs several seconds
of the speaker's audio (see :class:`serkit.Recognizer`).

The statistics come straight from the cache's pooled statistics (per-utterance frame mean and std and frame
count), so no frame is read twice; pooled vectors are normalised as the pooling of normalised frames would be:
``mean' = (mean - mu_s) / sd_s`` and ``std' = std / sd_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Normalisation modes a config may name under ``features.normalize``.
NORMALIZE_MODES = ("none", "speaker")
#: Lower bound on a speaker's per-dimension standard deviation.
MIN_STD = 1e-4


def frame_stats(pooled: np.ndarray, frames: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over all frames of several utterances, from their pooled statistics.

    Args:
        pooled: ``(utterances, layers, 2*dim)``: per-utterance frame mean then std (as the cache stores them).
        frames: frame count of each utterance (the weights).
    Returns ``(mean, std)``, each ``(layers, dim)`` float32.
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if pooled.ndim != 3 or pooled.shape[2] % 2:
        raise ValueError(f"pooled must be (utterances, layers, 2*dim), got {pooled.shape}")
    w = np.asarray(frames, dtype=np.float64)
    if w.shape != (pooled.shape[0],) or (w <= 0).any():
        raise ValueError(f"frames must be {pooled.shape[0]} positive counts, got {w}")
    w = w / w.sum()
    dim = pooled.shape[2] // 2
    mean_u, std_u = pooled[..., :dim], pooled[..., dim:]
    mean = np.einsum("n,nld->ld", w, mean_u)
    second = np.einsum("n,nld->ld", w, std_u**2 + mean_u**2)
    std = np.sqrt(np.maximum(second - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32)


def normalize_pooled(pooled: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(layers, 2*dim)`` pooled statistics of the normalised frames (``mean``/``std`` ``(layers, dim)``)."""
    dim = mean.shape[-1]
    out = np.empty(pooled.shape, dtype=np.float32)
    out[..., :dim] = (pooled[..., :dim] - mean) / std
    out[..., dim:] = pooled[..., dim:] / std
    return out


def normalize_frames(frames: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(layers, frames, dim)`` -> the same, z-scored per layer and dimension; keeps float16 input float16."""
    out = (np.asarray(frames, dtype=np.float32) - mean[:, None, :]) / std[:, None, :]
    return out.astype(frames.dtype if frames.dtype == np.float16 else np.float32)


class SpeakerNormalizer:
    """Per-speaker ``(mean, std)`` ``(layers, dim)``; :meth:`apply` normalises one utterance's features."""

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.stats = stats

    @classmethod
    def from_store(cls, store, manifest, ids: Sequence[str] | None = None) -> SpeakerNormalizer:
        """Statistics of every speaker of ``manifest`` (restricted to ``ids``) from a feature store's pooled
        statistics; uses features only, never labels."""
        rows = manifest if ids is None else manifest.set_index("id").loc[[str(i) for i in ids]].reset_index()
        stats = {}
        for speaker, group in rows.groupby(rows["speaker"].astype(str)):
            uids = group["id"].astype(str).tolist()
            pooled = np.stack([store.pooled(u) for u in uids])
            frames = [store.entry(u)["frames"] for u in uids]
            stats[speaker] = frame_stats(pooled, frames)
        return cls(stats)

    def apply(self, speaker: str, x: np.ndarray, level: str) -> np.ndarray:
        """``x``: pooled ``(layers, 2*dim)`` when ``level == "pooled"``, else frames ``(layers, frames, dim)``."""
        try:
            mean, std = self.stats[str(speaker)]
        except KeyError:
            raise KeyError(f"no normalisation statistics for speaker {speaker!r}") from None
        return normalize_pooled(x, mean, std) if level == "pooled" else normalize_frames(x, mean, std)
