"""Cross-validation runner: every fold of the config's protocol, resumable per fold, then results + report.

``DIR/results.json``::

    {"task": ..., "protocol": ..., "speaker_independent": bool,
     "folds": [{"fold": k, "test_speakers": [...], "n_test": n, "metrics": {...},
                "resumed": [{"phase": "search" | "refit", "epoch": e, "step": s}, ...]}, ...],
     "mean": {...}, "std": {...}}
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import yaml

from serkit.config import dump, load_config
from serkit.errors import ConfigError
from serkit.io import atomic_write_json, atomic_write_text
from serkit.metrics import mean_std
from serkit.protocols import load_folds, make_folds, save_folds, summary_text


def load_experiment_manifest(cfg: dict) -> pd.DataFrame:
    """The config's manifest: a prepared table, or the corpus read from ``root`` / $SERKIT_DATA; class set applied."""
    from serkit.corpora import apply_class_set, prepare
    from serkit.manifest import read_manifest

    if isinstance(cfg["corpus"], list):  # several corpora (cross-corpus): each read, its class set applied
        roots = cfg["root"] if isinstance(cfg["root"], dict) else {}
        parts = []
        for c in cfg["corpus"]:
            part = prepare(c, roots.get(c))
            parts.append(apply_class_set(part, cfg["class_set"], corpus=c) if cfg["class_set"] else part)
        df = pd.concat(parts, ignore_index=True)
    elif cfg["manifest"]:
        df = read_manifest(cfg["manifest"])
    else:
        df = prepare(cfg["corpus"], cfg["root"])
    if cfg["class_set"] and not isinstance(cfg["corpus"], list):
        df = apply_class_set(df, cfg["class_set"], corpus=cfg["corpus"])
    if cfg["task"] == "regression":
        missing = [t for t in cfg["targets"] if t not in df.columns]
        if missing:
            raise ConfigError(f"task: regression needs the target column(s) {missing} (config 'targets'); the "
                              f"manifest has {list(df.columns)}")
        df = df.dropna(subset=list(cfg["targets"])).reset_index(drop=True)
        if df.empty:
            raise ConfigError(f"task: regression: no utterance has values for all targets {cfg['targets']}")
    return df


def experiment_protocol(cfg: dict, manifest: pd.DataFrame) -> dict:
    """The config's protocol, else the corpus reader's; a dimensional task balances no class column."""
    if cfg["protocol"]:
        protocol = dict(cfg["protocol"])
    elif "corpus" in manifest.columns and manifest["corpus"].nunique() > 1:
        protocol = {"name": "cross_corpus"}
    else:
        from serkit.corpora import get_reader

        protocol = dict(get_reader(str(manifest["corpus"].iloc[0])).default_protocol)
    if cfg["task"] == "regression":
        protocol.setdefault("classes", None)
    return protocol


def feature_source(cfg: dict, manifest: pd.DataFrame, out_dir: Path):
    """Make sure the feature cache holds every utterance (extracting what is missing) and return the store."""
    if cfg["features"]["source"] != "cache":
        return None
    from serkit.train.features import ensure_features

    return ensure_features(manifest, cfg, out_dir)


def run_cv(config, out_dir: str | Path, overrides: list[str] | None = None, folds_only: list[int] | None = None,
           log=print) -> dict:
    cfg = load_config(config, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A folder is bound to its config once a fold has written something; a run that failed before that (a
    # wrong setting, bad data) leaves nothing that refuses the corrected rerun.
    started = has_fold_output(out)
    cfg_path = out / "config.yaml"
    if started and cfg_path.exists() and not same_config(cfg_path.read_text(), cfg):
        raise ConfigError(f"{cfg_path} holds a different config and its folds have results; use a new --out "
                          f"folder (or delete it) to change settings")
    manifest = load_experiment_manifest(cfg)
    protocol = experiment_protocol(cfg, manifest)
    check_folds(cfg, make_folds(manifest, protocol, seed=int(cfg["train"]["seed"])), manifest)  # before extraction
    source = feature_source(cfg, manifest, out)
    if source is not None:
        from serkit.train.features import usable_ids

        n = len(manifest)
        manifest = usable_ids(source, manifest)
        if len(manifest) < n:
            log(f"{n - len(manifest)} utterance(s) have no features (bad audio, see the store's errors.json); skipped")
    from serkit.precision import run_precision

    precision = run_precision(cfg, source)
    _check_fold_precision(out, precision)
    folds_path = out / "folds.json"
    folds = check_folds(cfg, make_folds(manifest, protocol, seed=int(cfg["train"]["seed"])), manifest)
    if started and folds_path.exists():
        saved = load_folds(folds_path)
        if [f.to_dict() for f in saved] != [f.to_dict() for f in folds]:
            raise ConfigError(f"{folds_path} differs from the folds this config builds now; refusing to mix them")
    save_folds(folds, folds_path)
    atomic_write_text(cfg_path, dump(cfg))
    log(f"{cfg['name']}: {len(manifest)} utterances, protocol {protocol}, {len(folds)} fold(s)")
    log(summary_text(folds, manifest, protocol))
    from serkit.train.fit import fit_fold

    results = []
    t0 = time.time()
    for fold in folds:
        if folds_only is not None and fold.index not in folds_only:
            continue
        t = time.time()
        res = fit_fold(cfg, manifest, fold, source, out / f"fold{fold.index}")
        key = "ua" if cfg["task"] == "classification" else "ccc_mean"
        log(f"fold {fold.index}: test {key} {res['metrics'][key]:.4f} (best epoch {res.get('best_epoch')}, "
            f"val {res.get('best_val')}) [{time.time() - t:.0f} s]")
        results.append(res)
    summary = summarise(cfg, folds, results, protocol)
    summary["precision"] = precision
    if protocol["name"] == "cross_corpus":
        from serkit.train.cross_corpus import cross_table

        summary["cross_corpus"] = cross_table(cfg, folds, results, protocol, out, log)
    summary["wall_seconds"] = round(time.time() - t0, 1)
    known = [r["seconds"] for r in results if r.get("seconds") is not None]
    if len(known) == len(results) and results:
        summary["fold_seconds"] = round(float(sum(known)), 1)
    atomic_write_json(out / "results.json", summary)
    from serkit.report import write_report

    write_report(out, summary, cfg)
    return summary


def _check_fold_precision(out: Path, precision: dict) -> None:
    """Refuse to resume a run whose finished folds ran in another precision (folds before precisions were
    recorded ran fp32 features and 32-true training)."""
    for res_path in sorted(out.glob("fold*/result.json")):
        done = json.loads(res_path.read_text()).get("precision", {"features": "fp32", "train": "32-true"})
        if done != precision:
            raise ConfigError(
                f"{res_path} ran with precision {done}, this run would use {precision}; set encoder.precision / "
                f"train.precision to match (e.g. --set encoder.precision=fp32) or use a new --out folder")


def has_fold_output(out: Path) -> bool:
    """Whether any fold of the run folder ``out`` has written a file (a log, a checkpoint, a result)."""
    return any(p.is_file() for p in Path(out).glob("fold*/**/*"))


def same_config(saved_yaml: str, cfg: dict) -> bool:
    """``saved_yaml`` (a run's config.yaml) holds the settings of ``cfg``, compared after filling in today's
    defaults, so that a default added later (e.g. features.normalize) does not refuse to resume the run."""
    if saved_yaml == dump(cfg):
        return True
    try:
        return yaml.safe_load(dump(load_config(yaml.safe_load(saved_yaml)))) == yaml.safe_load(dump(cfg))
    except (ConfigError, yaml.YAMLError):
        return False


def check_folds(cfg: dict, folds, manifest: pd.DataFrame):
    """Refuse folds whose scores would mean nothing: a classification test part of one class (its UA is one
    recall, 1.000 for a model that always says that class). Other weak spots are warnings on the folds."""
    if cfg["task"] == "classification":
        lab = manifest.set_index("id")["emotion"].astype(str)
        for f in folds:
            present = sorted(set(lab.loc[f.test]))
            if len(present) < 2:
                raise ConfigError(
                    f"protocol {f.protocol}: fold {f.index}'s test part holds only class(es) {present} "
                    f"(speakers {f.test_speakers[:5]}); its UA would be one class's recall. Use fewer folds "
                    f"(protocol.k), other speaker groups, or a corpus with more classes per speaker")
    return folds


FEATURE_NORMALISATION = {
    "none": "none",
    "speaker": "speaker: each speaker's frames z-scored with that speaker's own feature statistics (no labels; "
               "test speakers' statistics from their test utterances, i.e. transductive; speakers with too little "
               "speech get the training fold's global statistics, listed per fold)",
    "auto": "auto: per fold, speaker normalisation (transductive, as 'speaker') or none, whichever scored higher "
            "on the validation speakers (folds[k].normalisation says which)",
}


def describe_augmentation(cfg: dict) -> str:
    """One line for results and reports: which augmentation produced a number, and how (cached variants or live)."""
    aug = cfg.get("augment") or {}
    name = str(aug.get("name", "none")).lower()
    if name == "none":
        return "none"
    mode = aug.get("mode", "auto")
    if mode == "auto":
        mode = "on_the_fly" if cfg["features"]["source"] == "waveform" else "variants"
    if mode == "variants":
        return (f"{name}, mode variants: K={aug.get('k')} pre-mixed variants per training utterance, extracted once "
                f"into the feature cache ({aug.get('per_epoch', 1)} per utterance per epoch)")
    return f"{name}, mode {mode}: mixed anew in the training loop on waveforms, encoder in the loop"


#: Metrics whose per-fold gaps results.json names (``not_averaged``).
HEADLINE = ("wa", "ua", "macro_f1", "ccc_mean")


def summarise(cfg: dict, folds, results: list[dict], protocol: dict) -> dict:
    mean, std = mean_std([r["metrics"] for r in results])
    si = all(f.speaker_independent for f in folds)
    by_index = {f.index: f for f in folds}
    return {
        "name": cfg["name"],
        "recipe": cfg["recipe"],
        "task": cfg["task"],
        "protocol": protocol,
        "speaker_independent": si,
        "encoder": cfg["encoder"],
        "feature_normalisation": FEATURE_NORMALISATION[cfg["features"].get("normalize", "none")],
        "augmentation": describe_augmentation(cfg),
        "folds": [
            {**{k: r[k] for k in ("fold", "test_speakers", "n_test", "metrics", "best_epoch", "best_val", "confusion",
                                  "classes", "refit_epochs", "resumed", "ua_classes", "absent_from_test",
                                  "unseen_in_training", "val_speakers", "n_val", "normalisation", "selection")
                if k in r},
             "warnings": by_index[r["fold"]].warnings if r["fold"] in by_index else []}
            for r in results
        ],
        "mean": mean,
        "std": std,
        # a headline metric some fold could not score is named with those folds, never silently averaged away
        "not_averaged": {k: [r["fold"] for r in results if not math.isfinite(r["metrics"].get(k, math.nan))]
                         for k in HEADLINE if k in mean and any(not math.isfinite(r["metrics"].get(k, math.nan))
                                                                for r in results)},
        "fold_warnings": {str(f.index): f.warnings for f in folds if f.warnings},
    }


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
                     " | ".join(f"{f['metrics'].get(k, float('nan')):.4f}" for k in keys) + " |")
    lines.append("| mean ± std | | | " + " | ".join(
        f"{summary['mean'].get(k, float('nan')):.4f} ± {summary['std'].get(k, float('nan')):.4f}" for k in keys) + " |")
    for k, bad in (summary.get("not_averaged") or {}).items():
        lines.append(f"\n{k}: mean over {len(summary['folds']) - len(bad)} fold(s); no value in fold(s) {bad}")
    for k, ws in (summary.get("fold_warnings") or {}).items():
        lines.extend(f"\nwarning: fold {k}: {w}" for w in ws)
    return "\n".join(lines)


def load_results(out_dir) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
