"""Integrity check of a manifest's audio: ``serkit check MANIFEST``.

Every file is read; problems are reported by name and never stop the run: unreadable, empty, silent,
non-finite, out of range (peak above ``audio.MAX_AMPLITUDE``), clipped, too short, too long; plus notes on other
sample rates and multichannel files (which serkit converts on read).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import soundfile as sf

from serkit.audio import SILENCE_PEAK, audio_info, signal_problem, unusable
from serkit.constants import SAMPLE_RATE
from serkit.errors import AudioError

#: Problems that make a file unusable; extraction skips the same files with the same reasons (errors.json).
FATAL = ("missing", "unreadable", "bad sample rate", "truncated", "empty", "non-finite", "out of range",
         "silent", "too short to use", "not a regular file", "cannot read")


@dataclass
class CheckConfig:
    min_seconds: float = 0.5
    max_seconds: float = 60.0
    clip_level: float = 0.999
    clip_fraction: float = 1e-3
    edge_silence_fraction: float = 0.8


def edge_silence_seconds(signal: np.ndarray, sample_rate: int, threshold_db: float = -40.0) -> float:
    """Seconds of leading plus trailing audio whose 25 ms frame RMS is ``threshold_db`` below the peak frame."""
    hop = max(1, int(0.025 * sample_rate))
    n = len(signal) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt((signal[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-20)
    active = np.nonzero(20 * np.log10(rms / rms.max()) > threshold_db)[0]
    if len(active) == 0:
        return len(signal) / sample_rate
    return float((active[0] + (n - 1 - active[-1])) * hop / sample_rate)


@dataclass
class FileReport:
    id: str
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration: float = float("nan")
    peak: float = float("nan")
    edge_silence: float = float("nan")


def check_file(uid: str, path: str, cfg: CheckConfig = CheckConfig()) -> FileReport:
    rep = FileReport(uid, path)
    if not os.path.exists(path):
        rep.problems.append("missing")
        return rep
    try:
        info = audio_info(path)
    except AudioError as exc:  # "unreadable: ...", "bad sample rate: ...", "truncated: ..."
        name, _, detail = exc.problem.partition(": ")
        rep.problems.append(name)
        rep.notes.append(detail.splitlines()[0][:200] if detail else "")
        return rep
    if info["frames"] == 0:
        rep.problems.append("empty")
        return rep
    rep.duration = info["duration"]
    if info["sample_rate"] != SAMPLE_RATE:
        rep.notes.append(f"sample rate {info['sample_rate']} Hz (resampled to {SAMPLE_RATE} on read)")
    if info["channels"] != 1:
        rep.notes.append(f"{info['channels']} channels (averaged to mono on read)")
    if rep.duration > cfg.max_seconds:
        rep.problems.append("too long")
        rep.notes.append(f"{rep.duration:.1f} s > {cfg.max_seconds} s")
    try:
        data, _ = sf.read(path, dtype="float32", always_2d=True,
                          frames=int(min(info["frames"], 3600 * info["sample_rate"])))
    except Exception as exc:
        rep.problems.append("unreadable")
        rep.notes.append(str(exc).splitlines()[0][:200])
        return rep
    finite = np.isfinite(data)
    if not finite.all():
        rep.problems.append("non-finite")
        rep.notes.append(f"{int((~finite).sum())} NaN/inf samples")
        data = np.where(finite, data, 0.0)
    loud = signal_problem(data)
    if loud is not None:  # the level checks below mean nothing on such samples (they would report "mostly silent")
        name, _, detail = loud.partition(": ")
        rep.problems.append(name)
        rep.notes.append(detail)
        rep.peak = float(np.abs(data).max())
        return rep
    mono = data.mean(axis=1)  # what serkit reads
    rep.peak = float(np.abs(mono).max()) if mono.size else 0.0
    rep.edge_silence = edge_silence_seconds(mono, info["sample_rate"])
    verdict = unusable(mono, info["sample_rate"])
    if verdict is not None:
        name, _, detail = verdict.partition(": ")
        rep.problems.append(name)
        rep.notes.append(detail)
        if name == "silent" and data.size and float(np.abs(data).max()) >= SILENCE_PEAK:
            rep.notes.append("the channels cancel when averaged to mono")
        if name == "too short to use":
            return rep
    if rep.peak >= SILENCE_PEAK and rep.edge_silence > cfg.edge_silence_fraction * rep.duration:
        rep.problems.append("mostly silent")
        rep.notes.append(f"{rep.edge_silence:.2f} s of {rep.duration:.2f} s is leading/trailing silence")
    if rep.peak >= SILENCE_PEAK and (np.abs(data) >= cfg.clip_level).mean() > cfg.clip_fraction:
        rep.problems.append("clipped")
        rep.notes.append(f"{100 * (np.abs(data) >= cfg.clip_level).mean():.2f}% samples at full scale")
    if rep.duration < cfg.min_seconds:
        rep.problems.append("too short")
        rep.notes.append(f"{rep.duration:.2f} s < {cfg.min_seconds} s")
    return rep


def check_manifest(df: pd.DataFrame, cfg: CheckConfig = CheckConfig(), progress: bool = True) -> pd.DataFrame:
    """One row per file: ``id, path, duration, peak, problems, notes`` (problems ``;``-joined, '' when fine)."""
    from tqdm import tqdm

    reports = []
    for uid, path in tqdm(list(zip(df["id"], df["path"], strict=True)), desc="check", disable=not progress,
                          unit="file"):
        r = check_file(str(uid), str(path), cfg)
        reports.append({"id": r.id, "path": r.path, "duration": r.duration, "peak": r.peak,
                        "edge_silence": r.edge_silence, "problems": ";".join(r.problems),
                        "notes": "; ".join(r.notes)})
    return pd.DataFrame(reports)


def fatal(problems: str) -> list[str]:
    """The fatal problems among a report row's ``;``-joined ``problems``."""
    return [p for p in problems.split(";") if p in FATAL]


def summarise(report: pd.DataFrame) -> str:
    """Human-readable summary: counts per problem, then each affected file by name."""
    counts: Counter[str] = Counter()
    for p in report["problems"]:
        counts.update(x for x in p.split(";") if x)
    notes: Counter[str] = Counter()
    for n in report["notes"]:
        for x in str(n).split("; "):
            if "channels" in x or "sample rate" in x:
                notes[x.split(" (")[0]] += 1
    d = report["duration"]
    lines = [f"checked {len(report)} files, total {np.nansum(d) / 3600:.2f} h; "
             f"{int((report['problems'] != '').sum())} with problems",
             f"  duration s: min {d.min():.2f} median {d.median():.2f} max {d.max():.2f}; "
             f"{int((d.round(3) == d.round(3).mode().iloc[0]).sum()) if d.notna().any() else 0} file(s) share the most "
             f"common duration {d.round(3).mode().iloc[0] if d.notna().any() else float('nan'):.3f} s",
             f"  leading+trailing silence (-40 dB): median {np.nanmedian(report['edge_silence']):.2f} s, "
             f"max {np.nanmax(report['edge_silence']) if report['edge_silence'].notna().any() else float('nan'):.2f} s"]
    for k, v in sorted(counts.items()):
        lines.append(f"  {k}: {v}")
    for k, v in sorted(notes.items()):
        lines.append(f"  note: {k}: {v} file(s)")
    bad = report[report["problems"] != ""]
    for r in bad.head(50).itertuples():
        lines.append(f"  {r.path}: {r.problems}" + (f" ({r.notes})" if r.notes else ""))
    if len(bad) > 50:
        lines.append(f"  ... and {len(bad) - 50} more (see the CSV report)")
    return "\n".join(lines)
