"""Probabilities a person can trust: temperature scaling, expected calibration error and an abstain threshold,
each fitted on the validation speakers only (never on test utterances).

* :func:`fit_temperature`: the temperature ``T`` that minimises the negative log-likelihood of
  ``softmax(logits / T)`` on validation (Guo et al., 2017); the predicted label never changes.
* :func:`expected_calibration_error`: ECE over equal-width confidence bins (15 by default): the bin-weighted mean
  of ``|accuracy - mean confidence|``.
* :func:`abstain_threshold`: the lowest confidence at which the validation answers with at least that confidence
  were right at least ``target`` of the time (``unknown`` below it in prediction).

Models that output probabilities rather than logits are scaled as ``softmax(log(p) / T)``, the same family.
"""

from __future__ import annotations

import math

import numpy as np

#: Default confidence bins of the ECE.
ECE_BINS = 15
#: Default accuracy the answered validation predictions must reach for :func:`abstain_threshold`.
ABSTAIN_TARGET = 0.9
#: Range of temperatures searched (log-spaced, then refined).
T_RANGE = (0.05, 20.0)


def log_scores(outputs: dict) -> np.ndarray:
    """``(n, classes)`` logits of a model's outputs: ``logits``, or ``log(probs)`` for models that output
    probabilities (IF-MVSE's score sets)."""
    if "logits" in outputs:
        return np.asarray(outputs["logits"], dtype=np.float64)
    return np.log(np.clip(np.asarray(outputs["probs"], dtype=np.float64), 1e-12, 1.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature in :data:`T_RANGE` minimising the NLL of ``y`` ``(n,)`` under ``softmax(logits / T)``:
    a log-spaced grid, then a golden-section refinement around its best point (deterministic). 1.0 for no data."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    grid = np.exp(np.linspace(math.log(T_RANGE[0]), math.log(T_RANGE[1]), 61))
    losses = [nll(logits, y, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    t = math.exp((lo + hi) / 2)
    return float(t if nll(logits, y, t) <= losses[i] else grid[i])


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of ``probs`` ``(n, classes)`` against labels ``y`` ``(n,)`` over ``bins`` equal-width confidence bins."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    conf, pred = probs.max(-1), probs.argmax(-1)
    right = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(ece)


def abstain_threshold(probs: np.ndarray, y: np.ndarray, target: float = ABSTAIN_TARGET) -> float:
    """The lowest confidence ``t`` such that the predictions of ``probs`` with confidence >= ``t`` are right at least
    ``target`` of the time (0.0: every answer may stand; above every confidence when none reaches the target)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    conf = probs.max(-1)
    right = probs.argmax(-1) == y
    order = np.argsort(-conf, kind="stable")
    acc = np.cumsum(right[order]) / np.arange(1, len(y) + 1)  # accuracy of the k most confident
    ok = np.nonzero(acc >= target)[0]
    if len(ok) == 0:
        return float(min(1.0, conf.max() + 1e-6))
    k = int(ok.max())
    return 0.0 if k == len(y) - 1 else float(conf[order[k]])


def calibration_record(val_outputs: dict, val_y: np.ndarray, test_outputs: dict | None = None,
                       test_y: np.ndarray | None = None, target: float = ABSTAIN_TARGET) -> dict:
    """Temperature and abstain threshold fitted on validation; ECE before / after scaling on validation (and on
    test, when given, for the report: the test part never shapes either)."""
    v = log_scores(val_outputs)
    t = fit_temperature(v, val_y)
    rec = {"temperature": round(t, 6),
           "ece_val_before": expected_calibration_error(softmax(v), val_y),
           "ece_val_after": expected_calibration_error(softmax(v, t), val_y),
           "abstain_target": target,
           "abstain_threshold": abstain_threshold(softmax(v, t), val_y, target)}
    if test_outputs is not None and test_y is not None and len(test_y):
        s = log_scores(test_outputs)
        p = softmax(s, t)
        answered = p.max(-1) >= rec["abstain_threshold"]
        rec.update(ece_test_before=expected_calibration_error(softmax(s), test_y),
                   ece_test_after=expected_calibration_error(p, test_y),
                   test_answered=float(answered.mean()),
                   test_accuracy_answered=float((p.argmax(-1) == test_y)[answered].mean()) if answered.any()
                   else None)
    return rec
