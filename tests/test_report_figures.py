"""Report figures that read: per-fold scores with values, means and a legend clear of the bars on an axis that spans
the scores; learning curves that mark the epoch validation chose."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from serkit.report import folds_figure, learning_curves_figure

SCORES = {"ua": [0.71, 0.64, 0.78], "wa": [0.73, 0.66, 0.80]}


def _summary() -> dict:
    folds = [{"fold": i, "metrics": {k: v[i] for k, v in SCORES.items()}, "best_epoch": 2 + i} for i in range(3)]
    return {"folds": folds, "mean": {k: float(np.mean(v)) for k, v in SCORES.items()}}


def test_the_folds_figure_shows_values_means_and_a_legend_clear_of_the_bars():
    fig = folds_figure(_summary(), ["ua", "wa"])
    (ax,) = fig.axes
    texts = {t.get_text() for t in ax.texts}
    assert {f"{v:.2f}" for vs in SCORES.values() for v in vs} <= texts  # a value on every bar
    means = {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines()}
    assert means == pytest.approx({f"{k} mean {np.mean(v):.3f}": np.mean(v) for k, v in SCORES.items()})
    low, high = ax.get_ylim()
    assert 0.5 < low < min(min(v) for v in SCORES.values()) and high > max(max(v) for v in SCORES.values())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [b.get_window_extent(renderer) for b in ax.patches]
    assert bars and not any(legend.overlaps(b) for b in bars)
    labels = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(legend.overlaps(t) for t in labels)
    assert not legend.overlaps(ax.title.get_window_extent(renderer))


def test_learning_curves_mark_the_chosen_epoch(tmp_path):
    summary = _summary()
    for f in summary["folds"]:
        logs = tmp_path / f"fold{f['fold']}" / "logs"
        logs.mkdir(parents=True)
        epochs = np.arange(6)
        val = 0.5 + 0.05 * epochs - 0.03 * np.maximum(epochs - f["best_epoch"], 0) ** 2
        pd.DataFrame({"epoch": np.r_[epochs, epochs], "train_loss": np.r_[1.0 / (1 + epochs), [np.nan] * 6],
                      "val_ua": np.r_[[np.nan] * 6, val]}).to_csv(logs / "metrics.csv", index=False)
    fig, drawn = learning_curves_figure(tmp_path, "val_ua", summary)
    assert drawn == 3
    loss_ax, val_ax = fig.axes
    stars = [ln for ln in val_ax.get_lines() if ln.get_marker() == "*"]
    assert sorted(float(s.get_xdata()[0]) for s in stars) == [2.0, 3.0, 4.0]
    dotted = sorted(float(ln.get_xdata()[0]) for ln in loss_ax.get_lines() if ln.get_linestyle() == ":")
    assert dotted == [2.0, 3.0, 4.0]
    assert "fold1 (epoch 3)" in [t.get_text() for t in val_ax.get_legend().get_texts()]
