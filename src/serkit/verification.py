"""Speaker verification scoring: cosine trials between utterance embeddings and the equal error rate (EER).

Used to measure how much speaker information a branch carries (HCLD's speaker features X_s should verify
speakers well; emotion features X_e ideally should not).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate from trial ``scores (T,)`` (higher = more likely same speaker) and ``labels (T,)``
    (1/True = target trial, 0/False = non-target).

    Returns ``(eer, threshold)``: the rate (a fraction in [0, 1], not %) where the false-acceptance rate (FPR) equals
    the false-rejection rate (FNR = 1 - TPR) on the ROC of :func:`sklearn.metrics.roc_curve`, found by linear
    interpolation between the two ROC points that straddle FNR = FPR; ``threshold`` (score units) is interpolated
    the same way (accept when ``score >= threshold``).
    """
    s = _np(scores).astype(np.float64).ravel()
    y = _np(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"eer: {s.shape[0]} scores but {y.shape[0]} labels")
    if y.all() or not y.any():
        raise ValueError("eer: needs both target and non-target trials")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (fpr=0, tpr=0), ends at -1
    k = int(np.argmax(diff <= 0))  # first point with FNR <= FPR; k >= 1
    d0, d1 = diff[k - 1], diff[k]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    rate = fpr[k - 1] + t * (fpr[k] - fpr[k - 1])
    t0 = thr[k - 1] if np.isfinite(thr[k - 1]) else thr[k]
    threshold = t0 + t * (thr[k] - t0)
    return float(rate), float(threshold)


def _triu_from_linear(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-major index ``k`` of the strict upper triangle of an ``n x n`` matrix -> ``(i, j)`` with ``i < j``."""
    k = k.astype(np.int64)
    total = n * (n - 1) // 2
    # i = n - 2 - floor((sqrt(8 r + 1) - 1) / 2) with r = total - 1 - k counted from the end
    r = total - 1 - k
    m = np.floor((np.sqrt(8.0 * r + 1.0) - 1.0) / 2.0).astype(np.int64)
    # guard float rounding
    m = np.where((m + 1) * (m + 2) // 2 <= r, m + 1, m)
    m = np.where(m * (m + 1) // 2 > r, m - 1, m)
    i = n - 2 - m
    start = i * (2 * n - i - 1) // 2  # linear index of (i, i+1)
    j = k - start + i + 1
    return i, j


def cosine_trials(embeddings, speakers, max_trials: int | None = None, seed: int = 0,
                  chunk: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-similarity trials over utterance pairs ``i < j``.

    ``embeddings (N, d)``, ``speakers (N,)`` integer or string labels (integer ``< 0`` = unknown: dropped).
    All ``N(N-1)/2`` pairs, or ``max_trials`` pairs drawn uniformly without replacement (``seed``) when there are
    more. Returns ``(scores (T,) float64 cosine in [-1, 1], labels (T,) bool, True = same speaker)``, pairs in
    row-major (i, j) order.
    """
    x = _np(embeddings).astype(np.float64)
    spk = _np(speakers)
    if x.ndim != 2 or len(x) != len(spk):
        raise ValueError(f"cosine_trials: embeddings {x.shape} and speakers {spk.shape} do not match")
    if np.issubdtype(spk.dtype, np.integer):
        keep = spk >= 0
        x, spk = x[keep], spk[keep]
    n = len(x)
    total = n * (n - 1) // 2
    if total == 0:
        raise ValueError("cosine_trials: needs at least two utterances")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if max_trials is not None and total > max_trials:
        rng = np.random.default_rng(seed)
        lin = np.sort(rng.choice(total, size=int(max_trials), replace=False))
    else:
        lin = np.arange(total)
    scores = np.empty(len(lin))
    labels = np.empty(len(lin), dtype=bool)
    for s in range(0, len(lin), chunk):
        i, j = _triu_from_linear(lin[s:s + chunk], n)
        scores[s:s + chunk] = np.einsum("td,td->t", x[i], x[j])
        labels[s:s + chunk] = spk[i] == spk[j]
    return scores, labels


def speaker_eer(embeddings, speakers, max_trials: int | None = None, seed: int = 0) -> float:
    """EER (fraction) of cosine scoring over all (or ``max_trials`` sampled) pairs; see :func:`cosine_trials`."""
    scores, labels = cosine_trials(embeddings, speakers, max_trials=max_trials, seed=seed)
    return eer(scores, labels)[0]
