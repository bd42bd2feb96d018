"""A training run's per-epoch log (Lightning's CSV logger), stitched across resumes, and what validation chose."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _keep_old_metrics(fold_dir: Path) -> None:
    p = fold_dir / "logs" / "metrics.csv"
    if p.exists():
        n = len(list((fold_dir / "logs").glob("metrics-part*.csv")))
        p.rename(fold_dir / "logs" / f"metrics-part{n:02d}.csv")


def read_fold_metrics(fold_dir: Path) -> pd.DataFrame | None:
    """The fold's per-epoch log, stitched across resumes (a later part wins for epochs it re-ran)."""
    logs = Path(fold_dir) / "logs"
    parts = sorted(logs.glob("metrics-part*.csv")) + ([logs / "metrics.csv"] if (logs / "metrics.csv").exists() else [])
    if not parts:
        return None
    out = None
    for p in parts:
        df = pd.read_csv(p)
        if out is not None and "epoch" in df and len(df):
            out = out[out["epoch"] < df["epoch"].min()]
            out = pd.concat([out, df], ignore_index=True)
        else:
            out = df
    return out


def _best_epoch(fold_dir: Path, monitor: str):
    df = read_fold_metrics(fold_dir)
    if df is None or monitor not in df:
        return None
    v = df.dropna(subset=[monitor])
    return int(v.loc[v[monitor].idxmax(), "epoch"]) if len(v) else None


def _best_val(fold_dir: Path, monitor: str):
    df = read_fold_metrics(fold_dir)
    if df is None or monitor not in df:
        return None
    v = df[monitor].dropna()
    return float(v.max()) if len(v) else None


def read_fold_predictions(fold_dir: Path) -> pd.DataFrame:
    """A fold's ``predictions.csv`` (one row per test utterance: ``id``, ``speaker``, then ``true`` and ``label``
    with ``p_<class>`` for classification, or ``true_<attribute>`` and ``<attribute>`` for regression), in the
    column names ``serkit predict`` uses. A file written with the older ``pred`` / ``pred_<attribute>`` names reads
    the same."""
    df = pd.read_csv(Path(fold_dir) / "predictions.csv", dtype={"id": str})
    renames = {"pred": "label"} if "pred" in df.columns and "label" not in df.columns else {}
    renames |= {c: c[len("pred_"):] for c in df.columns
                if c.startswith("pred_") and f"true_{c[len('pred_'):]}" in df.columns and c[len("pred_"):] not in df}
    return df.rename(columns=renames)
