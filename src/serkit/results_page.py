"""Results that regenerate: a committed summary per run (``docs/results/<name>.json``) and the page written from
all of them (``docs/results.md``), so no figure is typed by hand.

``serkit results add RUN_DIR --command "serkit cv ..."`` reads the run folder of ``serkit cv`` (``results.json``,
``config.yaml`` and, where one lies beside it, the ``RUN_DIR.log`` with ``/usr/bin/time`` output) and writes the
summary; ``serkit results page`` renders the page. ``tests/test_results_page.py`` fails when the committed page
differs from what the committed summaries render.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from serkit.config_defaults import DEFAULTS
from serkit.errors import ConfigError

SINGLE_CLIP = "single clip"
SPEAKER_ADAPTIVE = "speaker-adaptive"
TRACKS = (SINGLE_CLIP, SPEAKER_ADAPTIVE)

#: corpus id -> the name a table heading shows
CORPUS_TITLES = {"ravdess": "RAVDESS", "emodb": "EmoDB", "tava": "TAVA", "iemocap": "IEMOCAP",
                 "msp-podcast": "MSP-Podcast", "msp-improv": "MSP-Improv", "crema-d": "CREMA-D", "savee": "SAVEE",
                 "tess": "TESS"}
METRIC_TITLES = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1", "ccc_mean": "CCC mean", "ccc_arousal": "CCC arousal",
                 "ccc_valence": "CCC valence", "ccc_dominance": "CCC dominance"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ELAPSED = re.compile(r"Elapsed \(wall clock\) time \([^)]*\):\s*(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")


def track_of(results: dict) -> str:
    """``single clip`` when the test speakers' own statistics took no part in scoring, else ``speaker-adaptive``.
    Uses ``test_speaker_statistics`` where results.json has it, else the feature normalisation the folds applied."""
    if "test_speaker_statistics" in results:
        used = results["test_speaker_statistics"]
        return SINGLE_CLIP if used in (None, False, "none", "") else SPEAKER_ADAPTIVE
    norm = str(results.get("feature_normalisation") or "none")
    if norm.startswith("speaker"):
        return SPEAKER_ADAPTIVE
    if norm.startswith("auto"):  # chosen per fold: any fold that used the speaker's statistics makes it adaptive
        chosen = [f.get("normalisation") for f in results.get("folds", [])]
        modes = [str(c.get("mode", "") if isinstance(c, dict) else c or "") for c in chosen]
        return SPEAKER_ADAPTIVE if any(m.startswith("speaker") for m in modes) else SINGLE_CLIP
    return SINGLE_CLIP


def _encoders(results: dict) -> list[dict]:
    """The run's encoder sections: one, or one per view of a multi-view run (IF-MVSE)."""
    enc = results.get("encoder") or {}
    return [e for e in enc if isinstance(e, dict)] if isinstance(enc, list) else [enc]


def encoder_ids(results: dict) -> str | None:
    """The run's encoder id, or its views' ids joined with `` + ``."""
    ids = [str(e["id"]) for e in _encoders(results) if e.get("id")]
    return " + ".join(ids) if ids else None


def encoder_regime(results: dict) -> str:
    """``"frozen"`` or ``"fine-tuned (<mode>)"``: how the run's encoder was trained (``encoder.finetune`` in any
    form the config accepts; a multi-view run: the first view that fine-tunes)."""
    from serkit.models.finetune import resolve_finetune

    modes = [resolve_finetune(e.get("finetune")).mode for e in _encoders(results)]
    mode = next((m for m in modes if m != "frozen"), "frozen")
    return "frozen" if mode == "frozen" else f"fine-tuned ({mode})"


def wall_seconds_from_log(path: str | Path) -> float | None:
    """The last ``Elapsed (wall clock) time`` of ``/usr/bin/time -v`` in a log file, in seconds; ``None`` if none."""
    found = _ELAPSED.findall(Path(path).read_text(errors="replace"))
    if not found:
        return None
    hours, minutes, seconds = found[-1]
    return round(int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds), 1)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (give the run folder of a finished `serkit cv`)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _corpus(run_dir: Path) -> str:
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: not found (a `serkit cv` run folder holds its config.yaml)")
    cfg = yaml.safe_load(path.read_text()) or {}
    corpus = cfg.get("corpus") or _manifest_corpus(cfg.get("manifest"))
    if not corpus:
        raise ConfigError(f"{path}: no 'corpus' key, and no manifest with a 'corpus' column")
    if isinstance(corpus, list):  # the corpora the folds test on: protocol.training_only's only add training data
        extra = set((cfg.get("protocol") or {}).get("training_only") or [])
        return "+".join(c for c in corpus if c not in extra)
    return str(corpus)


def _manifest_corpus(manifest) -> list[str] | None:
    """The corpora a table experiment's manifest names (its ``corpus`` column, as ``serkit prepare`` writes it)."""
    if not manifest or not Path(manifest).is_file():
        return None
    import pandas as pd

    path = Path(manifest)
    try:
        table = pd.read_parquet(path, columns=["corpus"]) if path.suffix == ".parquet" else \
            pd.read_csv(path, usecols=["corpus"])
    except (ValueError, OSError):
        return None
    names = sorted(str(c) for c in table["corpus"].dropna().unique())
    return names or None


def summarise_run(run_dir: str | Path, command: str, name: str | None = None, log: str | Path | None = None,
                  git_commit: str | None = None, note: str | None = None) -> dict:
    """The summary of one ``serkit cv`` run folder (what ``docs/results/<name>.json`` holds).

    Wall time: the command's own (``/usr/bin/time`` in ``log``, default ``RUN_DIR.log`` beside the folder) where
    known (``wall_of: "command"``), else results.json's time for the folds (``wall_of: "folds"``). Version,
    commit and machine come from results.json; a results.json without them gets the current checkout's values
    (``provenance_from: "serkit results add"``; ``git_commit`` overrides the commit). ``note``: one line shown
    with the run (e.g. what else loaded the machine)."""
    from serkit.provenance import provenance

    run = Path(run_dir)
    results = _read_json(run / "results.json")
    name = name or run.name
    if not _NAME.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    metric = "ua" if results.get("task", DEFAULTS["task"]) == "classification" else "ccc_mean"
    folds = results.get("folds") or []
    if not folds or metric not in (results.get("mean") or {}):
        raise ConfigError(f"{run / 'results.json'}: no per-fold {metric} (is the run finished?)")
    log_path = Path(log) if log else run.with_name(run.name + ".log")
    wall = wall_seconds_from_log(log_path) if log_path.exists() else None
    if log and wall is None:
        raise ConfigError(f"{log_path}: no '/usr/bin/time -v' elapsed time found")
    current = provenance() if "serkit_version" not in results else {}
    protocol = results.get("protocol") or {}
    return {
        "name": name,
        "command": command,
        "config": results.get("name"),
        "corpus": _corpus(run),
        "recipe": results.get("recipe"),
        "task": results.get("task"),
        "track": track_of(results),
        "protocol": {k: protocol[k] for k in ("name", "k") if k in protocol},
        "speaker_independent": results.get("speaker_independent"),
        "encoder": encoder_ids(results),
        "encoder_regime": encoder_regime(results),
        "serkit_version": results.get("serkit_version", current.get("serkit_version")),
        "git_commit": git_commit or results.get("git_commit", current.get("git_commit")),
        "machine": results.get("machine", current.get("machine")),
        "provenance_from": "results.json" if not current else "serkit results add",
        "precision": results.get("precision"),
        "threads": results.get("threads"),
        "wall_seconds": wall if wall is not None else results.get("wall_seconds"),
        "wall_of": "command" if wall is not None else "folds",
        "metric": metric,
        "mean": results["mean"][metric],
        "std": results["std"][metric],
        "per_fold": [f["metrics"][metric] for f in folds],
        "other_metrics": {k: results["mean"][k] for k in ("wa", "macro_f1", "ccc_arousal", "ccc_valence",
                                                          "ccc_dominance") if k in results["mean"]},
        "note": note,
    }


def add_run(run_dir, command: str, name: str | None = None, results_dir: str | Path = "docs/results",
            log=None, git_commit: str | None = None, note: str | None = None) -> Path:
    """Write ``results_dir/<name>.json`` for a run folder (atomically); returns its path."""
    from serkit.io import atomic_write_text

    summary = summarise_run(run_dir, command, name, log, git_commit, note)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / f"{summary['name']}.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def load_summaries(results_dir: str | Path = "docs/results") -> list[dict]:
    """Every ``*.json`` summary of ``results_dir``, in file-name order."""
    return [_read_json(p) for p in sorted(Path(results_dir).glob("*.json"))]


def _score(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def _precision(p) -> str:
    if isinstance(p, dict):
        return ", ".join(f"{k} {v}" for k, v in p.items())
    return str(p or "")


def _wall(s: dict) -> str:
    w = s.get("wall_seconds")
    if w is None:
        return ""
    text = f"{w:.0f} s" if w < 120 else f"{int(w // 60)} min {w % 60:.0f} s"
    return text if s.get("wall_of") == "command" else f"{text} (folds)"


def _machine(m) -> str:
    if not isinstance(m, dict):
        return ""
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"


def _commit(c) -> str:
    return f"`{c[:10]}{'-dirty' if str(c).endswith('-dirty') else ''}`" if c else "(not a git checkout)"


def _regime(s: dict) -> str:
    """The summary's encoder regime; summaries written before it was recorded describe frozen encoders."""
    return s.get("encoder_regime", "frozen")


def setting_of(s: dict) -> str:
    """The setting a run's row names: its config file's stem with the track left out, so that ``X.yaml`` (speaker-
    adaptive) and ``X-single-clip.yaml`` share a row (the baseline's ``single-clip.yaml`` pairs with
    ``baseline.yaml``); an ablation row (``serkit ablate X.yaml --rows R``) is ``X (R)``; the run's name where the
    command names no config file."""
    import re
    import shlex

    words = shlex.split(s.get("command") or "")
    stem = next((Path(w).stem for w in words if re.search(r"\.ya?ml$", w)), None)
    if stem is None:
        return s["name"]
    if stem == "single-clip":
        stem = "baseline"
    stem = stem.removesuffix("-single-clip")
    if "ablate" in words and "--rows" in words[:-1]:
        return f"{stem} ({words[words.index('--rows') + 1]})"
    return stem


def _row_key(s: dict) -> tuple[str, str, str]:
    """(recipe, encoder regime, setting): the runs that share a row of a corpus's table."""
    return s["recipe"], _regime(s), setting_of(s)


def render(summaries: list[dict]) -> str:
    """The Markdown page: per corpus a table with one row per recipe and the two tracks side by side, then every
    run's details (command, config, version, commit, machine, precision, threads, wall time, per fold)."""
    lines = [
        "# Results",
        "",
        "Generated by `serkit results page` from the summaries in `docs/results/` (one per run, written by",
        "`serkit results add RUN_DIR --command \"serkit cv ...\"`); do not edit by hand. The test suite regenerates",
        "this page and fails when it differs.",
        "",
        f"Two tracks: **{SINGLE_CLIP}** (each test clip is scored on its own) and **{SPEAKER_ADAPTIVE}** (the test",
        "speaker's own feature statistics, estimated from that speaker's unlabelled test utterances, normalise",
        "the features; transductive). Mean ± std over the folds of the corpus's speaker-independent protocol.",
    ]
    by_corpus: dict[str, list[dict]] = {}
    for s in summaries:
        by_corpus.setdefault(s["corpus"], []).append(s)
    for corpus in sorted(by_corpus, key=lambda c: CORPUS_TITLES.get(c, c).lower()):
        runs = by_corpus[corpus]
        metric = METRIC_TITLES.get(runs[0]["metric"], runs[0]["metric"])
        lines += ["", f"## {CORPUS_TITLES.get(corpus, corpus)}", ""]
        rows = sorted({_row_key(s) for s in runs}, key=lambda r: (r[0] != "baseline", r[0], r[1] != "frozen", r[1],
                                                                  r[2]))
        tracks = [t for t in TRACKS if any(s["track"] == t for s in runs)]
        lines += [f"| recipe | encoder | setting | {' | '.join(f'{t}: {metric}' for t in tracks)} |",
                  "|---|---|---|" + "---|" * len(tracks)]
        for key in rows:
            cells = {t: [s for s in runs if _row_key(s) == key and s["track"] == t] for t in tracks}
            for i in range(max(len(v) for v in cells.values())):
                row = [(f"{_score(v[i])} ([{v[i]['name']}](#{v[i]['name'].lower()}))" if i < len(v) else "-")
                       for v in cells.values()]
                lines.append(f"| {' | '.join(key)} | {' | '.join(row)} |")
        for s in sorted(runs, key=lambda s: s["name"]):
            other = ", ".join(f"{METRIC_TITLES.get(k, k)} {v:.4f}" for k, v in (s.get("other_metrics") or {}).items())
            protocol = s.get("protocol") or {}
            lines += [
                "",
                f"### {s['name']}",
                "",
                f"- command: `{s['command']}`",
                (f"- config: `{s['config']}`, recipe {s['recipe']}, track {s['track']}, encoder `{s['encoder']}` "
                 f"({_regime(s)}), "
                 f"protocol {protocol.get('name', '?')}" + (f" (k = {protocol['k']})" if "k" in protocol else "")),
                f"- {METRIC_TITLES.get(s['metric'], s['metric'])} {_score(s)}" + (f"; {other}" if other else ""),
                f"- per fold: {' '.join(f'{v:.4f}' for v in s['per_fold'])}",
                (f"- serkit {s.get('serkit_version')}, commit {_commit(s.get('git_commit'))}; machine: "
                 f"{_machine(s.get('machine'))}; precision: {_precision(s.get('precision'))}; threads: "
                 f"{', '.join(str(t) for t in s.get('threads') or []) or '?'}; wall time: {_wall(s) or '?'}"),
            ]
            if s.get("note"):
                lines.append(f"- note: {s['note']}")
    return "\n".join(lines) + "\n"


def write_page(results_dir: str | Path = "docs/results", page: str | Path = "docs/results.md") -> Path:
    from serkit.io import atomic_write_text

    summaries = load_summaries(results_dir)
    if not summaries:
        raise ConfigError(f"{results_dir}: no summaries (*.json); add one with `serkit results add RUN_DIR`")
    return atomic_write_text(page, render(summaries))


def _add(args) -> int:
    path = add_run(args.run_dir, args.command_line, args.name, args.results_dir, args.log, args.git_commit,
                   args.note)
    print(f"summary -> {path}")
    return 0


def _page(args) -> int:
    print(f"page -> {write_page(args.results_dir, args.page)}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("results", help="results pages that regenerate: summaries of run folders, docs/results.md")
    rsub = p.add_subparsers(dest="results_command", required=True)
    a = rsub.add_parser("add", help="summarise a `serkit cv` run folder into RESULTS_DIR/<name>.json")
    a.add_argument("run_dir", help="run folder of `serkit cv` (results.json, config.yaml)")
    a.add_argument("--command", dest="command_line", required=True,
                   help="the command that produced the run, e.g. \"serkit cv configs/emodb/baseline.yaml\"")
    a.add_argument("--name", help="summary name (default: the run folder's name)")
    a.add_argument("--log", help="log with /usr/bin/time -v output (default RUN_DIR.log beside the folder)")
    a.add_argument("--git-commit", help="commit the run used, for a results.json that does not record it")
    a.add_argument("--note", help="one line shown with the run, e.g. what else loaded the machine")
    a.add_argument("--results-dir", default="docs/results", help="where summaries live (default docs/results)")
    a.set_defaults(func=_add)
    g = rsub.add_parser("page", help="render the page from every summary")
    g.add_argument("--results-dir", default="docs/results", help="summaries (default docs/results)")
    g.add_argument("--page", default="docs/results.md", help="page to write (default docs/results.md)")
    g.set_defaults(func=_page)
