"""An ablation table from its rows' run folders: ``DIR/<table>.md`` (paper-shaped), ``.csv`` and ``.png``.

Each row's numbers come from ``DIR/<row>/results.json`` and every ``DIR/<row>/fold<k>/result.json`` it lacks, so
a row whose folds ran in parts (``--folds 0,1`` and ``--folds 2,3`` run apart, fold folders copied
together) counts each fold once; a fold found twice with different metrics is an error. Metrics are shown in %,
mean ± std over folds (sample std; 0 for one fold).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.ablation.spec import Row, Table
from serkit.errors import ConfigError
from serkit.io import atomic_write, atomic_write_text
from serkit.metrics import mean_std

#: column titles of the common metrics (other keys are shown as they are, or as the layout's metric_labels say)
METRIC_LABELS = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "ccc_mean": "CCC"}
NOT_RUN = "not run"


def primary_metrics(task: str) -> list[str]:
    """The metrics a table shows when its layout names none."""
    return ["ua", "wa", "macro_f1"] if task == "classification" else ["ccc_mean"]


def percent_mean_std(mean: dict, std: dict, key: str, missing: str = "-") -> str:
    """``"75.33 ± 5.62"`` (fractions shown in %) for ``key``; ``missing`` when absent or NaN."""
    if key not in mean or mean[key] != mean[key]:
        return missing
    return f"{100 * mean[key]:.2f} ± {100 * std.get(key, 0.0):.2f}"


def row_result(run_dir) -> dict | None:
    """``{"folds": [k, ...], "mean": {...}, "std": {...}, "seconds": wall or None}`` of one row's run folder, or
    None when no fold has finished there."""
    run_dir = Path(run_dir)
    per_fold: dict[int, dict] = {}
    seconds = None
    summary = run_dir / "results.json"
    found = []
    if summary.exists():
        res = json.loads(summary.read_text())
        seconds = res.get("wall_seconds")
        found += [(summary, f) for f in res.get("folds", [])]
    found += [(p, json.loads(p.read_text())) for p in sorted(run_dir.glob("fold*/result.json"))]
    for where, fold in found:
        k, metrics = int(fold["fold"]), fold["metrics"]
        if k in per_fold and json.dumps(per_fold[k], sort_keys=True) != json.dumps(metrics, sort_keys=True):
            raise ConfigError(f"{where}: fold {k} of {run_dir.name} has other metrics than another copy of that fold")
        per_fold[k] = metrics
    if not per_fold:
        return None
    mean, std = mean_std([per_fold[k] for k in sorted(per_fold)])
    return {"folds": sorted(per_fold), "mean": mean, "std": std, "seconds": seconds}


def row_setting(run_dir, dotted: str) -> str:
    """``augment.mode`` of the config a row ran with (``DIR/<row>/config.yaml``); ``""`` before it ran or when the
    config has no such key."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return ""
    import yaml

    value = yaml.safe_load(path.read_text())
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    return str(value)


def _metric_label(table: Table, key: str) -> str:
    return table.layout.metric_labels.get(key, METRIC_LABELS.get(key, key))


def _line_label(table: Table, row: Row) -> str:
    return " / ".join(row.values[a] for a in table.layout.rows) if table.axes else row.name


def _records(out: Path, table: Table, results: dict, metrics: list[str]) -> list[dict]:
    recs = []
    for row in table.rows:
        res = results.get(row.name)
        rec = {"row": row.name, **row.values, "note": row.note, "overrides": " ".join(row.overrides),
               **{title: row_setting(out / row.name, key) for title, key in table.layout.config.items()},
               "folds": len(res["folds"]) if res else 0, "fold_ids": " ".join(map(str, res["folds"])) if res else ""}
        for k in metrics:
            m = res["mean"].get(k, float("nan")) if res else float("nan")
            rec[f"{k}_mean"] = 100 * m
            rec[f"{k}_std"] = 100 * res["std"].get(k, float("nan")) if res else float("nan")
        rec["seconds"] = res["seconds"] if res else None
        recs.append(rec)
    return recs


def _cell(res: dict | None, key: str) -> str:
    return percent_mean_std(res["mean"], res["std"], key) if res else NOT_RUN


def _lines(out: Path, table: Table, results: dict, metrics: list[str]) -> list[str]:
    """The markdown table: one line per row, label and config columns, then folds, metrics and wall seconds."""
    labels = ["row", *table.layout.rows] if table.axes else ["row", "note", "overrides"]
    labels += list(table.layout.config)
    lines = ["| " + " | ".join(labels + ["folds"] + [f"{_metric_label(table, k)} (%)" for k in metrics]
                               + ["wall s"]) + " |", "|" + "---|" * (len(labels) + len(metrics) + 2)]
    for row in table.rows:
        res = results.get(row.name)
        cells = [row.name, *(row.values[a] for a in table.layout.rows)] if table.axes else \
            [row.name, row.note, f"`{' '.join(row.overrides)}`" if row.overrides else "(the config)"]
        cells += [row_setting(out / row.name, key) for key in table.layout.config.values()]
        folds = f"{len(res['folds'])} ({' '.join(map(str, res['folds']))})" if res else ""
        wall = f"{res['seconds']:.0f}" if res and res.get("seconds") is not None else ""
        lines.append("| " + " | ".join(cells + [folds] + [_cell(res, k) for k in metrics] + [wall]) + " |")
    return lines


def _pivot(table: Table, results: dict) -> tuple[list[str], list[str], list[list[dict | None | str]]]:
    """``(line labels, column labels, cells)`` of a layout with ``columns``: a cell is a row's result, None (not
    run) or ``"-"`` (no row of the table there)."""
    col_axis = table.layout.columns
    cols = [c for c in table.axes[col_axis] if any(r.values[col_axis] == c for r in table.rows)]
    keys: list[tuple] = []
    for r in table.rows:
        key = tuple(r.values[a] for a in table.layout.rows)
        if key not in keys:
            keys.append(key)
    grid: list[list] = [["-"] * len(cols) for _ in keys]
    for r in table.rows:
        i, j = keys.index(tuple(r.values[a] for a in table.layout.rows)), cols.index(r.values[col_axis])
        grid[i][j] = results.get(r.name)
    return [" / ".join(k) for k in keys], cols, grid


def _pivot_lines(table: Table, results: dict) -> list[str]:
    labels, cols, grid = _pivot(table, results)
    metric = table.layout.metrics[0]
    head = [*table.layout.rows] or ["row"]
    lines = [f"{_metric_label(table, metric)} (%) by {table.layout.columns}:", "",
             "| " + " | ".join(head + cols) + " |", "|" + "---|" * (len(head) + len(cols))]
    for label, cells in zip(labels, grid):
        shown = [c if c == "-" else _cell(c, metric) for c in cells]
        lines.append("| " + " | ".join(label.split(" / ") + shown) + " |")
    return lines


def figure(table: Table, results: dict, metrics: list[str], title: str, out_png: Path) -> bool:
    """Bars with std whiskers: one group per table line, one bar per metric (or per column value of a layout with
    ``columns``). Returns False (and writes nothing) when no row has a result."""
    if table.layout.columns:
        labels, groups, grid = _pivot(table, results)
        metric = metrics[0]
        cells = [[c if isinstance(c, dict) else None for c in line] for line in grid]
        vals = np.array([[_value(c, metric, "mean") for c in line] for line in cells])
        errs = np.array([[_value(c, metric, "std") for c in line] for line in cells])
        ylabel = f"{_metric_label(table, metric)} (%)"
    else:
        labels = [_line_label(table, r) for r in table.rows]
        groups = [_metric_label(table, k) for k in metrics]
        vals = np.array([[_value(results.get(r.name), k, "mean") for k in metrics] for r in table.rows])
        errs = np.array([[_value(results.get(r.name), k, "std") for k in metrics] for r in table.rows])
        ylabel = "%"
    if not np.isfinite(vals).any():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) * max(1, len(groups)) ** 0.5 + 2), 4.5))
    x = np.arange(len(labels))
    for j, g in enumerate(groups):
        ax.bar(x + (j - (len(groups) - 1) / 2) * width, vals[:, j], width, yerr=np.nan_to_num(errs[:, j]), label=g,
               capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                       fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out_png, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return True


def _value(res: dict | None, key: str, which: str) -> float:
    return 100 * float(res[which].get(key, float("nan"))) if res else float("nan")


def write_table(out_dir, table: Table, task: str, title: str, context: str = "") -> str:
    """Write ``DIR/<table>.md`` / ``.csv`` / ``.png`` (the figure once some row has a result) from the rows' run
    folders under ``out_dir``; returns the markdown. ``context``: a sentence on what every row shares (corpus,
    protocol, encoder), put before the caption."""
    out = Path(out_dir)
    metrics = table.layout.metrics or primary_metrics(task)
    results = {r.name: row_result(out / r.name) for r in table.rows}
    body = _pivot_lines(table, results) if table.layout.columns else _lines(out, table, results, metrics)
    caption = (context.strip() + " " if context else "") + (table.caption.strip() + " " if table.caption else "") + \
        f"Mean ± std over folds, in %; `{NOT_RUN}`: no finished fold in DIR/<row>/ yet."
    md = "\n".join([f"# {title}", "", caption, "", *body]) + "\n"
    if figure(table, results, metrics, title, out / f"{table.name}.png"):
        md += f"\n![{table.name}]({table.name}.png)\n"
    atomic_write_text(out / f"{table.name}.md", md)
    atomic_write_text(out / f"{table.name}.csv",
                      pd.DataFrame(_records(out, table, results, metrics)).to_csv(index=False))
    return md
