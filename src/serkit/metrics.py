"""Evaluation metrics, as fractions in [0, 1] (CCC and Pearson in [-1, 1]).

Classification: WA (weighted accuracy = plain accuracy), UA (unweighted accuracy = mean per-class recall,
a.k.a. balanced accuracy / UAR), macro-F1, per-class recall and the confusion matrix.
Regression: CCC, Pearson r and MAE per attribute, and ``ccc_mean``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, mean_absolute_error, recall_score


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """``{"wa", "ua", "macro_f1", "recall_<class>"...}`` over the classes that occur in ``y_true``.

    ``y_true``/``y_pred`` are class indices into ``class_names``. UA averages recall over classes present in
    ``y_true`` (classes absent from a fold cannot be recalled); macro-F1 likewise.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    present = np.unique(y_true)
    recalls = recall_score(y_true, y_pred, labels=np.arange(len(class_names)), average=None, zero_division=0)
    out = {
        "wa": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "ua": float(recalls[present].mean()) if len(present) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
    }
    for i, name in enumerate(class_names):
        out[f"recall_{name}"] = float(recalls[i]) if i in present else float("nan")
    return out


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts (true class, predicted class): (classes, classes) int."""
    return confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), labels=np.arange(num_classes))


def ccc(pred, target) -> float:
    """Concordance correlation coefficient of two 1-d arrays (population moments)."""
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def pearson(pred, target) -> float:
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def regression_metrics(pred, target, attributes: list[str]) -> dict:
    """``ccc_<a>, pearson_<a>, mae_<a>`` per attribute and ``ccc_mean``; arrays are (n, attributes)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    out = {}
    for i, a in enumerate(attributes):
        out[f"ccc_{a}"] = ccc(pred[:, i], target[:, i])
        out[f"pearson_{a}"] = pearson(pred[:, i], target[:, i])
        out[f"mae_{a}"] = float(mean_absolute_error(target[:, i], pred[:, i]))
    out["ccc_mean"] = float(np.mean([out[f"ccc_{a}"] for a in attributes]))
    return out


def mean_std(per_fold: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1; 0 for a single fold) of each metric key over folds, ignoring NaN."""
    keys = sorted({k for m in per_fold for k in m})
    mean, std = {}, {}
    for k in keys:
        vals = np.array([m.get(k, np.nan) for m in per_fold], dtype=float)
        vals = vals[np.isfinite(vals)]
        mean[k] = float(vals.mean()) if len(vals) else float("nan")
        std[k] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return mean, std
