"""Emotion timelines of long recordings: merging scored pieces into segments, a CSV table and a PNG figure.

Pieces are ``(start, end, scores)`` (seconds; class probabilities). Adjacent pieces with the same label merge
when the silence between them is at most ``gap`` seconds; a merged segment's probabilities are the
duration-weighted mean of its pieces'. A recording is summed up by time (:func:`speech_time_summary`: the share
of speech per label and its longest stretches), not by a mean of its windows' probabilities. Each label has one
colour (:func:`label_colours`), in the PNG and on the ``serkit serve`` page alike. matplotlib is imported only
when a figure is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.io import atomic_write_bytes, atomic_write_text

#: Timeline colours, in class order (the ``serkit serve`` page gets them from ``/health``).
PALETTE = ("#d64545", "#e08a1e", "#c9b21b", "#3c9d4f", "#2a8c9c", "#2f5bd3", "#7a4fc8", "#b4458f", "#6b7280")


def label_colours(classes: list[str]) -> dict[str, str]:
    """``{class: "#rrggbb"}``: the colour of each class, by its position in the model's class list."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def merge_segments(pieces: list[tuple[float, float, np.ndarray]], classes: list[str], gap: float = 1.0
                   ) -> list[dict]:
    """``[(start, end, probabilities (classes,)), ...]`` in time order -> ``[{"start", "end", "label",
    "probabilities", "pieces"}, ...]`` with adjacent same-label pieces at most ``gap`` s apart merged."""
    groups: list[list[tuple[float, float, np.ndarray]]] = []
    for s, e, p in pieces:
        label = int(np.argmax(p))
        if groups and int(np.argmax(groups[-1][0][2])) == label and s - groups[-1][-1][1] <= gap:
            groups[-1].append((s, e, p))
        else:
            groups.append([(s, e, p)])
    out = []
    for g in groups:
        w = np.array([e - s for s, e, _ in g], dtype=float)
        p = np.average(np.stack([x for _, _, x in g]), axis=0, weights=w)
        out.append({"start": round(float(g[0][0]), 3), "end": round(float(g[-1][1]), 3),
                    "label": classes[int(np.argmax(p))],
                    "probabilities": {c: round(float(v), 4) for c, v in zip(classes, p, strict=True)},
                    "pieces": len(g)})
    return out


def speech_time_summary(segments: list[dict], classes: list[str]) -> dict:
    """What a long recording holds, told by time: ``{"speech_share": {label: share of the scored speech time},
    "longest": {label: {"start", "end", "seconds"}}}`` from merged segments (each segment's time counts for its
    label). A plain average of the windows' probabilities hides a recording of several emotions; this does not."""
    seconds = dict.fromkeys(classes, 0.0)
    longest: dict = {}
    for seg in segments:
        d = float(seg["end"]) - float(seg["start"])
        seconds[seg["label"]] = seconds.get(seg["label"], 0.0) + d
        if d > longest.get(seg["label"], {}).get("seconds", -1.0):
            longest[seg["label"]] = {"start": seg["start"], "end": seg["end"], "seconds": round(d, 3)}
    total = sum(seconds.values())
    share = {c: round(v / total, 4) if total > 0 else 0.0 for c, v in seconds.items()}
    return {"speech_share": share, "longest": longest}


def segments_table(result: dict) -> pd.DataFrame:
    """One row per segment of a :meth:`serkit.Recognizer.predict_segments` result."""
    rows = []
    for seg in result.get("segments", []):
        row = {"file": result["file"], "start": seg["start"], "end": seg["end"], "label": seg.get("label")}
        row.update({f"p_{k}": v for k, v in seg.get("probabilities", {}).items()})
        row.update(seg.get("values", {}))
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["file", "start", "end", "label"])


def summary_table(result: dict, classes: list[str]) -> pd.DataFrame:
    """One row per class of a classification ``predict_segments`` result: ``file, label, speech_seconds,
    speech_share, longest_start, longest_end, longest_seconds`` (the speech-time summary), largest share first."""
    share, longest = result.get("speech_share", {}), result.get("longest", {})
    seconds = dict.fromkeys(classes, 0.0)
    for seg in result.get("segments", []):
        seconds[seg["label"]] = seconds.get(seg["label"], 0.0) + float(seg["end"]) - float(seg["start"])
    rows = [{"file": result["file"], "label": c, "speech_seconds": round(seconds[c], 3),
             "speech_share": share.get(c, 0.0), "longest_start": longest.get(c, {}).get("start"),
             "longest_end": longest.get(c, {}).get("end"), "longest_seconds": longest.get(c, {}).get("seconds")}
            for c in classes]
    return pd.DataFrame(rows).sort_values("speech_share", ascending=False, kind="stable")


def summary_line(result: dict, top: int = 3) -> str:
    """``"sad 62% · happy 25% · angry 12% of speech"`` (largest shares first), or the reason there is none."""
    share = {k: v for k, v in result.get("speech_share", {}).items() if v > 0}
    if not share:
        return result.get("note") or "no speech"
    best = sorted(share.items(), key=lambda kv: -kv[1])[:top]
    return " · ".join(f"{c} {100 * v:.0f}%" for c, v in best) + " of speech"


def plot_timeline(result: dict, classes: list[str]):
    """A matplotlib figure: one row per class, a bar per segment over time (s), shaded by its probability; on
    the right each class's share of the speech time (:func:`speech_time_summary`), its longest stretch outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = label_colours(classes)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(max(7.5, min(22.0, result["duration"] / 6 + 2)),
                                                  0.45 * len(classes) + 1.3),
                                   gridspec_kw={"width_ratios": [5, 1]}, sharey=True)
    for seg in result.get("segments", []):
        row = classes.index(seg["label"])
        ax.broken_barh([(seg["start"], seg["end"] - seg["start"])], (row - 0.4, 0.8), color=colours[seg["label"]],
                       alpha=0.35 + 0.65 * float(seg["probabilities"][seg["label"]]))
    for label, stretch in result.get("longest", {}).items():
        ax.broken_barh([(stretch["start"], stretch["seconds"])], (classes.index(label) - 0.4, 0.8),
                       facecolor="none", edgecolor="#1d2330", linewidth=1.0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlim(0, max(result["duration"], 1e-3))
    ax.set_ylim(-0.6, len(classes) - 0.4)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{Path(result['file']).name}: {summary_line(result)}, {result['head']} head", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    share = result.get("speech_share", {})
    values = [100 * share.get(c, 0.0) for c in classes]
    side.barh(range(len(classes)), values, color=[colours[c] for c in classes], height=0.8)
    for row, v in enumerate(values):
        side.text(v + 2, row, f"{v:.0f}%", va="center", fontsize=8)
    side.set_xlim(0, 125)
    side.set_xlabel("% of speech")
    side.tick_params(left=False)
    fig.tight_layout()
    return fig


def write_timeline(result: dict, classes: list[str], out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``<stem>.segments.csv`` and, for classification, ``<stem>.summary.csv`` (:func:`summary_table`) and
    ``<stem>.timeline.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    stem = Path(result["file"]).stem
    csv = atomic_write_text(out_dir / f"{stem}.segments.csv", segments_table(result).to_csv(index=False))
    if not classes:
        return csv, None
    atomic_write_text(out_dir / f"{stem}.summary.csv", summary_table(result, classes).to_csv(index=False))
    import matplotlib.pyplot as plt

    fig = plot_timeline(result, classes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return csv, atomic_write_bytes(out_dir / f"{stem}.timeline.png", buf.getvalue())
