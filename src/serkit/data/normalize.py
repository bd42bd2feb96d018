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

Its limits: a speaker's statistics are only as good as that speaker's speech. A speaker with less than
``min_seconds`` of audio or fewer than ``min_utterances`` utterances gets the global statistics of the reference
utterances instead (the training fold's; :attr:`SpeakerNormalizer.fallback_speakers` lists them). And a speaker
whose speech is all one emotion loses that emotion with its mean: on corpora cut from broadcast speech, speaker
normalisation can be worse than none. ``features.normalize: auto`` (serkit.train.select) therefore trains the
head both ways and keeps the one the validation speakers prefer, per fold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Normalisation modes a config may name under ``features.normalize`` (``auto``: chosen per fold on validation).
NORMALIZE_MODES = ("none", "speaker", "auto")
#: Defaults for how much speech a speaker needs for its own statistics (``features.speaker_min_seconds`` /
#: ``features.speaker_min_utterances``); the prediction side asks for the same 10 s of enrolment.
MIN_SECONDS = 10.0
MIN_UTTERANCES = 5
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
    """Per-speaker ``(mean, std)`` ``(layers, dim)``; :meth:`apply` normalises one utterance's features.

    ``fallback``: the global ``(mean, std)`` that speakers with too little speech share (``fallback_speakers``);
    also used for a speaker that has no statistics of its own, when given."""

    def __init__(self, stats: dict[str, tuple[np.ndarray, np.ndarray]],
                 fallback: tuple[np.ndarray, np.ndarray] | None = None, fallback_speakers: Sequence[str] = ()):
        self.stats = stats
        self.fallback = fallback
        self.fallback_speakers = sorted(fallback_speakers)
        #: how many utterances (features, or statistics for an encoder in the loop) it normalised / served: the
        #: feature stage reports what was applied from these, never from the config
        self.applied = 0
        #: datasets built to normalise with it (items a process-level cache serves again count there)
        self.datasets = 0

    @classmethod
    def from_store(cls, store, manifest, ids: Sequence[str] | None = None, *, min_seconds: float = 0.0,
                   min_utterances: int = 1, reference_ids: Sequence[str] | None = None) -> SpeakerNormalizer:
        """Statistics of every speaker of ``manifest`` (restricted to ``ids``) from a feature store's pooled
        statistics; uses features only, never labels.

        A speaker with under ``min_seconds`` of audio (the store's seconds per utterance) or under
        ``min_utterances`` utterances is normalised with the statistics of all ``reference_ids`` (default: all
        ``ids``) instead; pass the training fold's ids so that no test utterance shapes them."""
        rows = manifest if ids is None else manifest.set_index("id").loc[[str(i) for i in ids]].reset_index()
        stats = {}
        small = []
        for speaker, group in rows.groupby(rows["speaker"].astype(str)):
            uids = group["id"].astype(str).tolist()
            entries = [store.entry(u) for u in uids]
            seconds = sum(float(e.get("seconds") or 0.0) for e in entries)
            if len(uids) < min_utterances or seconds < min_seconds:
                small.append(speaker)
                continue
            pooled = np.stack([store.pooled(u) for u in uids])
            stats[speaker] = frame_stats(pooled, [e["frames"] for e in entries])
        fallback = None
        if small:
            ref = [str(u) for u in (reference_ids if reference_ids is not None else rows["id"])]
            fallback = frame_stats(np.stack([store.pooled(u) for u in ref]), [store.entry(u)["frames"] for u in ref])
            stats.update({s: fallback for s in small})
        return cls(stats, fallback, small)

    def apply(self, speaker: str, x: np.ndarray, level: str, layers: list[int] | None = None) -> np.ndarray:
        """``x``: pooled ``(layers, 2*dim)`` when ``level == "pooled"``, else frames ``(layers, frames, dim)``;
        ``layers``: the stored layers ``x`` holds (default: all of them, in order)."""
        mean, std = self.stats_for(speaker)
        if layers is not None:
            mean, std = mean[layers], std[layers]
        return normalize_pooled(x, mean, std) if level == "pooled" else normalize_frames(x, mean, std)

    def stats_for(self, speaker: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` ``(layers, dim)`` of ``speaker``, e.g. for a model that runs the encoder in the loop and
        normalises its outputs (:func:`normalize_hidden`)."""
        try:
            stats = self.stats[str(speaker)]
        except KeyError:
            raise KeyError(f"no normalisation statistics for speaker {speaker!r}") from None
        self.applied += 1
        return stats


def normalize_hidden(hidden, batch: dict, layer: int):
    """Hidden state ``layer`` ``(batch, frames, dim)`` of an encoder run in the loop, z-scored with each item's
    speaker statistics ``batch["speaker_mean"]`` / ``batch["speaker_std"]`` ``(batch, layers, dim)`` (the feature
    stage attaches them when ``features.normalize: speaker``); returned unchanged when the batch has none."""
    if "speaker_mean" not in batch:
        return hidden
    mean = batch["speaker_mean"][:, layer].to(hidden.device, hidden.dtype)
    std = batch["speaker_std"][:, layer].to(hidden.device, hidden.dtype)
    return (hidden - mean[:, None, :]) / std[:, None, :]
