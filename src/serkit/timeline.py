"""Emotion timelines of long recordings: merging scored pieces into segments, a CSV table and a PNG figure.

Pieces are ``(start, end, scores)`` (seconds; class probabilities). Adjacent pieces with the same label merge
when the silence between them is at most ``gap`` seconds; a merged segment's probabilities are the
duration-weighted mean of its pieces'. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.io import atomic_write_bytes, atomic_write_text


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


def plot_timeline(result: dict, classes: list[str]):
    """A matplotlib figure: one row per class, a bar per segment over time (s), shaded by its probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, min(20.0, result["duration"] / 6)), 0.45 * len(classes) + 1.2))
    colours = plt.get_cmap("tab10")
    for seg in result.get("segments", []):
        row = classes.index(seg["label"])
        ax.broken_barh([(seg["start"], seg["end"] - seg["start"])], (row - 0.4, 0.8), color=colours(row % 10),
                       alpha=0.35 + 0.65 * float(seg["probabilities"][seg["label"]]))
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlim(0, max(result["duration"], 1e-3))
    ax.set_ylim(-0.6, len(classes) - 0.4)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{Path(result['file']).name}: {result.get('label')} overall, {result['head']} head", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_timeline(result: dict, classes: list[str], out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``<stem>.segments.csv`` and (classification) ``<stem>.timeline.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    stem = Path(result["file"]).stem
    csv = atomic_write_text(out_dir / f"{stem}.segments.csv", segments_table(result).to_csv(index=False))
    if not classes:
        return csv, None
    import matplotlib.pyplot as plt

    fig = plot_timeline(result, classes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return csv, atomic_write_bytes(out_dir / f"{stem}.timeline.png", buf.getvalue())
