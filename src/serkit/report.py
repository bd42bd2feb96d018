"""Results report: ``report.md`` with tables and figures (confusion matrix, per-fold scores, learning curves)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from serkit.io import atomic_write_text
from serkit.train.logs import _best_epoch, read_fold_metrics


def plot_confusion(conf: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    conf = np.asarray(conf, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}\n({int(conf[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def folds_figure(summary: dict, keys: list[str]):
    """Per-fold test scores: a bar per fold and metric with its value on it, each metric's mean over folds as a
    dashed line of its colour, the legend beside the axes (never over a bar) and the y axis spanning the scores
    (with a margin), not forced to start at 0. Returns the matplotlib figure."""
    folds = summary["folds"]
    x = np.arange(len(folds))
    w = 0.8 / max(1, len(keys))
    fig, ax = plt.subplots(figsize=(3.5 + (0.4 + 0.4 * len(keys)) * len(folds), 3.6))
    values = []
    for i, k in enumerate(keys):
        v = np.array([np.nan if f["metrics"].get(k) is None else float(f["metrics"][k]) for f in folds])
        values.append(v)
        bars = ax.bar(x + i * w, v, w, label=k)
        ax.bar_label(bars, labels=["" if np.isnan(b) else f"{b:.2f}" for b in v], fontsize=7, padding=1)
        mean = (summary.get("mean") or {}).get(k)
        if mean is None and np.isfinite(v).any():
            mean = float(np.nanmean(v))
        if mean is not None:
            ax.axhline(mean, color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1,
                       label=f"{k} mean {mean:.3f}")
    ax.set_xticks(x + w * (len(keys) - 1) / 2, [str(f["fold"]) for f in folds])
    ax.set_xlabel("fold")
    finite = np.concatenate(values)[np.isfinite(np.concatenate(values))] if values else np.array([])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        margin = max(0.05 * (hi - lo), 0.02)
        ax.set_ylim(lo - 2 * margin, hi + 3 * margin)  # room above the bars for their values
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the axes
    ax.set_title("per-fold test scores (dashed: mean over folds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_folds(summary: dict, keys: list[str], path: Path) -> None:
    """Write :func:`folds_figure` to ``path`` (PNG)."""
    fig = folds_figure(summary, keys)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fold_work_dirs(out_dir: Path, summary: dict | None = None) -> list[tuple[str, Path]]:
    """``(label, training folder)`` per fold: ``foldK``, or the candidate validation chose
    (``foldK/select/<choice>``); for a multi-stage recipe one per training stage (``foldK/<stage>``)."""
    from serkit.train.select import slug

    folds = {f"fold{f['fold']}": f for f in (summary or {}).get("folds", [])}
    out = []
    for d in sorted(p for p in out_dir.glob("fold*") if p.is_dir()):
        f = folds.get(d.name, {})
        if f.get("stage_work_dirs"):
            out += [(f"{d.name}/{name}", Path(w)) for name, w in f["stage_work_dirs"].items()]
        elif f.get("selection") and f["selection"].get("candidates"):  # several candidates: the chosen one's
            out.append((d.name, d / "select" / slug(f["selection"]["chosen"])))
        else:
            out.append((d.name, d))
    return out


def learning_curves_figure(out_dir: Path, monitor: str, summary: dict | None = None):
    """Training loss and the validation monitor per epoch for each fold's training (see :func:`fold_work_dirs`),
    the epoch validation chose marked on both (a dotted line on the loss, a star on the validation curve; the
    legend names it). Returns ``(figure, number of curves drawn)``."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    folds = {f"fold{f['fold']}": f for f in (summary or {}).get("folds", [])}
    drawn = 0
    for label, work_dir in fold_work_dirs(out_dir, summary):
        df = read_fold_metrics(work_dir)
        if df is None:
            continue
        chosen = folds.get(label, {}).get("best_epoch")
        if chosen is None:  # a stage of a multi-stage recipe: the best epoch of its own validation log
            chosen = _best_epoch(work_dir, monitor)
        color = None
        if "train_loss" in df:
            t = df.dropna(subset=["train_loss"])
            color = a1.plot(t["epoch"], t["train_loss"], label=label)[0].get_color()
            if chosen is not None:
                a1.axvline(chosen, color=color, linestyle=":", linewidth=1)
        if monitor in df:
            v = df.dropna(subset=[monitor])
            color = a2.plot(v["epoch"], v[monitor], color=color,
                            label=label if chosen is None else f"{label} (epoch {chosen})")[0].get_color()
            at = v[v["epoch"] == chosen]
            if len(at):
                a2.plot(at["epoch"].iloc[-1], at[monitor].iloc[-1], marker="*", markersize=11, color=color,
                        markeredgecolor="black", linestyle="none")
        drawn += 1
    a1.set_title("training loss (dotted: chosen epoch)")
    a2.set_title(f"validation {monitor.removeprefix('val_')} (star: chosen epoch)")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        if a.get_legend_handles_labels()[0]:  # a closed-form fit (ridge) logs no training loss
            a.legend(fontsize=7)
    fig.tight_layout()
    return fig, drawn


def plot_learning_curves(out_dir: Path, monitor: str, path: Path, summary: dict | None = None) -> bool:
    """Write :func:`learning_curves_figure` to ``path`` (PNG); False when no fold has a training log."""
    fig, drawn = learning_curves_figure(out_dir, monitor, summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn > 0


def choices_section(summary: dict) -> list[str]:
    """Per fold: what validation chose (normalisation, head options) and which speakers fell back to global
    normalisation statistics for lack of speech."""
    rows = []
    for f in summary["folds"]:
        sel, norm = f.get("selection"), f.get("normalisation") or {}
        if not sel and not norm.get("fallback_speakers"):
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in sel["chosen"].items()) if sel else "-"
        scores = (" / ".join(f"{c['val']:.3f}" if c["val"] is not None else "-" for c in sel["candidates"])
                  if sel else "-")
        fb = " ".join(norm.get("fallback_speakers", [])) or "-"
        rows.append(f"| {f['fold']} | {chosen} | {scores} | {fb} |")
    if not rows:
        return []
    head = ("| fold | chosen | validation score of each candidate (grid order) | speakers with too little speech "
            "(global statistics) |")
    return ["## Chosen on the validation speakers", "", head, "|---|---|---|---|", *rows, ""]


def _cell(value) -> str:
    """A metric in a table: four decimals, ``-`` where a fold has none (null in results.json)."""
    return "-" if value is None else f"{value:.4f}"


def format_table(summary: dict, keys: list[str] | None = None) -> str:
    """Markdown table of per-fold metrics plus mean ± std (percent for classification)."""
    if keys is None:
        keys = ["wa", "ua", "macro_f1"] if summary["task"] == "classification" else \
            [k for k in summary["mean"] if k.startswith("ccc_")]
        keys += [k for k in ("speaker_eer", "speaker_wa", "speaker_ua") if k in summary["mean"]]
    head = "| fold | test speakers | n | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (3 + len(keys))]
    for f in summary["folds"]:
        spk = " ".join(s.split("_")[-1] for s in f["test_speakers"][:6])
        lines.append(f"| {f['fold']} | {spk} | {f['n_test']} | " +
                     " | ".join(_cell(f["metrics"].get(k)) for k in keys) + " |")
    lines.append("| mean ± std | | | " + " | ".join(
        f"{summary['mean'].get(k, float('nan')):.4f} ± {summary['std'].get(k, float('nan')):.4f}" for k in keys) + " |")
    for k, bad in (summary.get("not_averaged") or {}).items():
        lines.append(f"\n{k}: mean over {len(summary['folds']) - len(bad)} fold(s); no value in fold(s) {bad}")
    for k, ws in (summary.get("fold_warnings") or {}).items():
        lines.extend(f"\nwarning: fold {k}: {w}" for w in ws)
    return "\n".join(lines)


def format_stages(summary: dict) -> str:
    """Markdown: each scored stage's test (and validation) mean ± std over folds; the last one is the result."""
    keys = ["ua", "wa", "macro_f1"] if summary["task"] == "classification" else \
        [k for k in summary["mean"] if k.startswith("ccc_")]
    lines = ["| stage | " + " | ".join(keys) + " | validation " + keys[0] + " |", "|" + "---|" * (2 + len(keys))]
    for n, s in summary["stages"].items():
        val = s.get("val_mean", {}).get(keys[0])
        lines.append(f"| {n} | " + " | ".join(
            f"{s['mean'].get(k, float('nan')):.4f} ± {s['std'].get(k, float('nan')):.4f}" for k in keys)
            + f" | {'-' if val is None else f'{val:.4f}'} |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, summary: dict, cfg: dict) -> Path:
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    lines = [f"# {summary['name']}", ""]
    si = summary["speaker_independent"]
    lines.append(f"- recipe: `{summary['recipe']}`; task: {summary['task']}; protocol: `{summary['protocol']}` — "
                 + ("**speaker-independent**" if si else "**speaker-DEPENDENT** (test speakers also in training)"))
    enc = cfg["encoder"]
    lines.append(f"- encoder: `{enc}`; features: `{cfg['features']['source']}`")
    norm = summary.get("feature_normalisation", "none")
    if norm != "none":
        lines.append(f"- feature normalisation: **{norm}**")
    aug = summary.get("augmentation", "none")
    if aug != "none":
        lines.append(f"- augmentation: **{aug}**")
    lines.append(f"- model: `{cfg['model']}`; objective: `{cfg['objective']}`")
    lines.append(f"- schedule: `{ {k: cfg['train'][k] for k in ('epochs', 'batch_size', 'lr', 'patience', 'seed')} }`;"
                 f" selection on `{cfg['train']['monitor']}` (validation speakers only)")
    if summary.get("precision") or summary.get("threads"):
        prec = summary.get("precision") or {}
        what = [f"features {prec['features']}, training {prec['train']}"] if prec else []
        if summary.get("threads"):
            what.append("torch CPU threads " + " / ".join(map(str, summary["threads"])))
        lines.append(f"- ran with: {'; '.join(what)}")
    if "wall_seconds" in summary:
        spent = f"; the folds took {summary['fold_seconds']:.0f} s when trained" if "fold_seconds" in summary else ""
        lines.append(f"- wall time: {summary['wall_seconds']:.0f} s (this invocation{spent})")
    resumed = []
    for f in summary["folds"]:
        if f.get("resumed"):
            where = ", ".join(f"{r['phase']} after epoch {r['epoch']}" for r in f["resumed"])
            resumed.append(f"fold {f['fold']} ({where})")
    if resumed:
        lines.append(f"- resumed after a kill (from the last epoch's checkpoint): {'; '.join(resumed)}")
    track = summary.get("test_speaker_statistics")
    if track is not None:
        lines.append("- track: " + ("**speaker-adaptive** (test speakers' own utterances inform their features)"
                                    if track else "**single clip** (no test-speaker statistics)"))
    if summary.get("calibration"):
        c = summary["calibration"]
        text = (f"- calibration (temperature fitted on validation speakers, mean over folds): ECE on validation "
                f"{c['ece_val_before']:.3f} -> {c['ece_val_after']:.3f}")
        if "ece_test_before" in c:
            text += f"; on test {c['ece_test_before']:.3f} -> {c['ece_test_after']:.3f}"
        if c.get("test_answered") is not None and c.get("test_accuracy_answered") is not None:
            text += (f"; abstaining below the validation threshold answers {c['test_answered']:.0%} of the test "
                     f"clips, {c['test_accuracy_answered']:.1%} of them right")
        lines.append(text)
    lines += ["", "## Test scores per fold", "", format_table(summary), ""]
    if summary.get("cross_corpus"):
        lines += ["## Cross-corpus table", "", format_cross_table(summary["cross_corpus"], cfg), ""]
    if summary.get("stages"):
        lines += ["## Stages (test mean ± std over folds; the last is the result)", "", format_stages(summary), ""]
    if summary["task"] == "classification":
        keys = ["wa", "ua", "macro_f1"]
        confs = [np.asarray(f["confusion"]) for f in summary["folds"] if "confusion" in f]
        if confs:
            classes = summary["folds"][0]["classes"]
            total = np.sum(confs, axis=0)
            plot_confusion(total, classes, fig_dir / "confusion.png", "confusion, all test folds (row %)")
            lines += ["## Confusion matrix (all folds)", "", "![confusion](figures/confusion.png)", ""]
            rec = {c: summary["mean"].get(f"recall_{c}") for c in classes}
            lines += ["Per-class recall (mean over folds): "
                      + ", ".join(f"{c} {v:.3f}" for c, v in rec.items() if v is not None), ""]
    else:
        keys = [k for k in summary["mean"] if k.startswith("ccc_")]
    plot_folds(summary, keys, fig_dir / "folds.png")
    lines += ["## Per-fold scores", "", "![folds](figures/folds.png)", ""]
    lines += choices_section(summary)
    if plot_learning_curves(out_dir, cfg["train"]["monitor"], fig_dir / "learning_curves.png", summary):
        lines += ["## Learning curves", "", "![curves](figures/learning_curves.png)", ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def format_cross_table(entry: dict, cfg: dict) -> str:
    """Markdown: one row per training set, one column per test corpus; in-corpus figures on the diagonal."""
    key = entry["metric"]
    tests = sorted({r["test"] for r in entry["rows"]} | set(entry["in_corpus"]))
    trains = sorted({"+".join(r["train"]) for r in entry["rows"]} | set(entry["in_corpus"]))
    cell = {("+".join(r["train"]), r["test"]): r[key] for r in entry["rows"]}
    title = (f"Cross-corpus {key.upper()} (rows: training corpora, columns: test corpus; diagonal: in-corpus "
             f"speaker-independent cross-validation). Classes: {cfg['class_set']}; feature normalisation: "
             f"{cfg['features']['normalize']}.")
    lines = [title, "",
             "| train \\ test | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
    for tr in trains:
        vals = []
        for te in tests:
            if tr == te and te in entry["in_corpus"]:
                ic = entry["in_corpus"][te]
                vals.append(f"({ic[key]:.3f} ± {ic['std']:.3f}, in-corpus, {ic['folds']} folds)")
            elif (tr, te) in cell:
                vals.append(f"**{cell[(tr, te)]:.3f}**")
            else:
                vals.append("-")
        lines.append(f"| {tr} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"
