"""Cross-validation runner: every fold of the config's protocol, resumable per fold, then results + report.

``DIR/results.json``::

    {"task": ..., "protocol": ..., "speaker_independent": bool,
     "folds": [{"fold": k, "test_speakers": [...], "n_test": n, "metrics": {...},
                "resumed": [{"phase": "search" | "refit", "epoch": e, "step": s}, ...]}, ...],
     "mean": {...}, "std": {...}}
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from serkit.config import dump, load_config
from serkit.config_defaults import AUGMENT_DEFAULTS, UNRECORDED_PRECISION
from serkit.errors import ConfigError
from serkit.io import atomic_write_json, atomic_write_text
from serkit.metrics import mean_std
from serkit.protocols import load_folds, make_folds, save_folds, summary_text
from serkit.provenance import provenance
from serkit.report import format_table, write_report  # noqa: F401  (format_table: importable from here too)
from serkit.train.experiment import experiment_protocol, load_experiment_manifest
from serkit.train.feature_stage import NORMALISATION_TEXT, applied_normalisation


def feature_source(cfg: dict, manifest: pd.DataFrame, out_dir: Path, log=print):
    """Make sure the feature cache holds every utterance of every view the recipe declares (extracting what is
    missing) and return the store: one, ``{view: store}`` for several views, or None (waveforms without speaker
    normalisation; with it the store gives the speakers' statistics)."""
    from serkit.recipes.catalog import get_recipe

    recipe = get_recipe(cfg["recipe"])
    if cfg["features"]["speed_perturb"] and recipe.no_speed_copies:
        raise ConfigError(f"config: features.speed_perturb does not apply to the {cfg['recipe']} recipe: "
                          f"{recipe.no_speed_copies}")
    if cfg["features"]["source"] != "cache" and cfg["features"]["normalize"] == "none":
        return None
    from serkit.train.features import ensure_features

    views = recipe.feature_views(cfg)
    stores = {v["name"]: ensure_features(manifest, cfg, out_dir, encoder=v["encoder"], log=log) for v in views}
    return stores["main"] if list(stores) == ["main"] else stores


def usable_manifest(source, manifest: pd.DataFrame, log=print) -> pd.DataFrame:
    """Rows with features in every store of ``source`` (bad audio was reported and skipped at extraction)."""
    from serkit.train.features import usable_ids

    n = len(manifest)
    for store in (source.values() if isinstance(source, dict) else [source]):
        if store is not None:
            manifest = usable_ids(store, manifest)
    if len(manifest) < n:
        log(f"{n - len(manifest)} utterance(s) have no features (bad audio, see the store's errors.json); skipped")
    return manifest


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
    # before extraction
    planned = check_folds(cfg, make_folds(manifest, protocol, seed=int(cfg["train"]["seed"])), manifest)
    unknown = sorted(set(folds_only or ()) - {f.index for f in planned})
    if unknown:
        raise ConfigError(f"--folds {','.join(map(str, unknown))}: no such fold; the protocol gives {len(planned)} "
                          f"fold(s), numbered 0-{len(planned) - 1}")
    source = feature_source(cfg, manifest, out, log)
    manifest = usable_manifest(source, manifest, log)
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
        gc.collect()  # a fold's models, trainers and preloaded datasets hold each other in cycles: free them now
        key = "ua" if cfg["task"] == "classification" else "ccc_mean"
        log(f"fold {fold.index}: test {key} {res['metrics'][key]:.4f} (best epoch {res.get('best_epoch')}, "
            f"val {res.get('best_val')}) [{time.time() - t:.0f} s]")
        results.append(res)
    summary = summarise(cfg, folds, results, protocol)
    summary["precision"] = precision
    summary["threads"] = sorted({r["threads"] for r in results if "threads" in r})  # torch CPU threads per fold
    summary.update(provenance())  # serkit_version, git_commit, machine
    if protocol["name"] == "cross_corpus":
        from serkit.train.cross_corpus import cross_table

        summary["cross_corpus"] = cross_table(cfg, folds, results, protocol, out, run_cv, log)
    summary["wall_seconds"] = round(time.time() - t0, 1)
    known = [r["seconds"] for r in results if r.get("seconds") is not None]
    if len(known) == len(results) and results:
        summary["fold_seconds"] = round(float(sum(known)), 1)
    atomic_write_json(out / "results.json", summary)
    write_report(out, summary, cfg)
    return summary


def _check_fold_precision(out: Path, precision: dict) -> None:
    """Refuse to resume a run whose finished folds ran in another precision (folds before precisions were
    recorded ran fp32 features and 32-true training)."""
    for res_path in sorted(out.glob("fold*/result.json")):
        done = json.loads(res_path.read_text()).get("precision", UNRECORDED_PRECISION)
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


#: results.json's normalisation texts (kept importable; the feature stage owns them)
FEATURE_NORMALISATION = NORMALISATION_TEXT


def describe_augmentation(cfg: dict) -> str:
    """One line for results and reports: which augmentation produced a number, and how (cached variants or live)."""
    aug = {**AUGMENT_DEFAULTS, **(cfg.get("augment") or {})}
    name = str(aug["name"]).lower()
    if name == "none":
        return "none"
    mode = aug["mode"]
    if mode == "auto":
        mode = "on_the_fly" if cfg["features"]["source"] == "waveform" else "variants"
    if mode == "variants":
        return (f"{name}, mode variants: K={aug.get('k')} pre-mixed variants per training utterance, extracted once "
                f"into the feature cache ({aug.get('per_epoch', 1)} per utterance per epoch)")
    return f"{name}, mode {mode}: mixed anew in the training loop on waveforms, encoder in the loop"


#: Metrics whose per-fold gaps results.json names (``not_averaged``).
HEADLINE = ("wa", "ua", "macro_f1", "ccc_mean")


def summarise(cfg: dict, folds, results: list[dict], protocol: dict) -> dict:
    """results.json: per-fold test metrics, their mean and std, and what the runner applied (the folds' feature
    stage records, never the config)."""
    mean, std = mean_std([r["metrics"] for r in results])
    si = all(f.speaker_independent for f in folds)
    by_index = {f.index: f for f in folds}
    records = [v for r in results for v in (r.get("features") or {}).values()]
    auto = cfg["features"].get("normalize") == "auto"  # chosen per fold: folds[k].normalisation says which
    summary = {
        "name": cfg["name"],
        "recipe": cfg["recipe"],
        "task": cfg["task"],
        "protocol": protocol,
        "speaker_independent": si,
        "encoder": cfg["encoder"],
        "feature_normalisation": NORMALISATION_TEXT["auto"] if auto else applied_normalisation(records),
        # the track: did any test speaker's own utterances inform its features (speaker-adaptive) or not (single clip)
        "test_speaker_statistics": any(r.get("normalize") not in (None, "none") for r in records),
        "feature_stage": records[0] if records else None,
        "augmentation": describe_augmentation(cfg),
        "folds": [
            {**{k: r[k] for k in ("fold", "test_speakers", "n_test", "metrics", "best_epoch", "best_val", "confusion",
                                  "classes", "refit_epochs", "resumed", "ua_classes", "absent_from_test",
                                  "unseen_in_training", "val_speakers", "n_val", "normalisation", "selection",
                                  "stage_metrics", "stage_seconds", "stage_work_dirs", "batching", "threads",
                                  "extras", "calibration", "final_stage")
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
    cal = [r["calibration"] for r in results if r.get("calibration")]
    if cal and len(cal) == len(results):
        keys = [k for k in ("ece_val_before", "ece_val_after", "ece_test_before", "ece_test_after", "test_answered",
                            "test_accuracy_answered") if all(c.get(k) is not None for c in cal)]
        summary["calibration"] = {k: float(np.mean([c[k] for c in cal])) for k in keys}
    stage_names = [n for n in (results[0].get("stage_metrics") or {})] if results else []
    if stage_names:
        summary["stages"] = {}
        for n in stage_names:
            m, s = mean_std([r["stage_metrics"][n]["test"] for r in results])
            vals = [r["stage_metrics"][n]["val"] for r in results if r["stage_metrics"][n].get("val")]
            vm, vs = mean_std(vals) if len(vals) == len(results) else ({}, {})
            summary["stages"][n] = {"mean": m, "std": s, "val_mean": vm, "val_std": vs}
        summary["final_stage"] = {"rule": cfg["train"]["final_stage"],
                                  "per_fold": [r.get("final_stage") for r in results]}
    return summary


def load_results(out_dir) -> dict:
    return json.loads((Path(out_dir) / "results.json").read_text())
