"""The fold result: metrics, calibration, stage records and the feature stage's record, as results.json holds them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError
from serkit.io import atomic_write, atomic_write_text
from serkit.metrics import classification_metrics, confusion, regression_metrics
from serkit.train.logs import _best_epoch, _best_val, _keep_old_metrics, read_fold_metrics  # noqa: F401
from serkit.train.scoring import class_probabilities, task_metrics
from serkit.train.stages import (
    StageContext,
    TrainStage,
    chosen_stage,
)
from serkit.train.trainer import read_resumes

log = logging.getLogger("serkit")


def normalised_state(ctx: StageContext) -> dict:
    return {v: f.normalised for v, f in ctx.features.items()}


def feature_record(ctx: StageContext, before: dict) -> dict:
    """Per view, what the feature stage applied since ``before`` (normalised-item counts)."""
    out = {}
    for v, f in ctx.features.items():
        n = f.normalised - before[v]
        out[v] = {**f.record(), "normalised_items": n, "normalize": f.mode if n > 0 else "none"}
    return out


def fold_result(ctx: StageContext, stages: list, records: dict) -> dict:
    cfg, fold, labels, manifest = ctx.cfg, ctx.fold, ctx.labels, ctx.manifest
    scored = [s.name for s in stages if ctx.results[s.name].outputs is not None
              and "test" in ctx.results[s.name].outputs]
    if not scored:
        raise ConfigError(f"recipe {cfg['recipe']!r}: no stage produced test outputs to score")
    final = ctx.results[chosen_stage(ctx, scored)]
    rows = manifest.set_index("id").loc[[str(i) for i in fold.test]].reset_index()
    enc = {"test": labels.encode(rows),
           "val": labels.encode(manifest.set_index("id").loc[[str(i) for i in fold.val]].reset_index())}
    test = final.outputs["test"]
    res = {"fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": fold.val_speakers,
           "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
           "best_epoch": final.marker.get("best_epoch"), "best_val": final.marker.get("best_val")}
    pred_table = pd.DataFrame({"id": rows["id"], "speaker": rows["speaker"]})
    if cfg["task"] == "classification":
        y_true = enc["test"]["emotion"]
        probs = class_probabilities(test)
        y_pred = probs.argmax(-1)
        res["metrics"] = classification_metrics(y_true, y_pred, labels.classes)
        # UA and macro-F1 average over the classes the test part holds; say which, and which it lacks
        train_rows = manifest.set_index("id").loc[[str(i) for i in fold.train]].reset_index()
        seen = set(labels.encode(train_rows)["emotion"].tolist())
        res["ua_classes"] = [c for i, c in enumerate(labels.classes) if i in set(y_true.tolist())]
        res["absent_from_test"] = [c for i, c in enumerate(labels.classes)
                                   if i in seen and c not in res["ua_classes"]]
        res["unseen_in_training"] = [c for i, c in enumerate(labels.classes)
                                     if c in res["ua_classes"] and i not in seen]
        res["confusion"] = confusion(y_true, y_pred, len(labels.classes)).tolist()
        pred_table["true"] = [labels.classes[i] for i in y_true]
        pred_table["label"] = [labels.classes[i] for i in y_pred]
        for i, c in enumerate(labels.classes):
            pred_table[f"p_{c}"] = probs[:, i]
        if "val" in final.outputs and len(fold.val):  # temperature and abstain threshold from validation only
            from serkit.calibration import calibration_record

            res["calibration"] = calibration_record(final.outputs["val"], enc["val"]["emotion"], test, y_true)
    else:
        y_true = enc["test"]["targets"]
        res["metrics"] = regression_metrics(test["prediction"], y_true, labels.targets)
        for i, a in enumerate(labels.targets):
            pred_table[f"true_{a}"] = y_true[:, i]
            pred_table[a] = test["prediction"][:, i]
    res["metrics"].update(ctx.recipe.extra_test_metrics(test, rows, labels, fold))
    res["classes"] = labels.classes
    res["normalisation"] = final.marker.get("normalisation", {"mode": cfg["features"]["normalize"]})
    if final.marker.get("selection") is not None:
        res["selection"] = final.marker["selection"]
    if "refit_epochs" in final.marker:
        res["refit_epochs"] = final.marker["refit_epochs"]
    res["batching"] = {s.name: ctx.results[s.name].marker.get("batching") for s in stages if isinstance(s, TrainStage)}
    if len(stages) > 1:
        res["stages"] = [s.name for s in stages]
        res["stage_dirs"] = str(ctx.root)
        res["final_stage"] = final.name
        res["stage_metrics"] = {
            n: {"test": task_metrics(cfg["task"], labels, ctx.results[n].outputs["test"], enc["test"]),
                "val": task_metrics(cfg["task"], labels, ctx.results[n].outputs["val"], enc["val"])
                if "val" in ctx.results[n].outputs else None}
            for n in scored}
        res["stage_seconds"] = {s.name: ctx.results[s.name].marker.get("seconds") for s in stages}
        res["stage_work_dirs"] = {s.name: str(ctx.results[s.name].marker.get("work_dir") or ctx.results[s.name].dir)
                                  for s in stages if isinstance(s, TrainStage)}  # their logs (learning curves)
    res["resumed"] = []
    for s in stages:
        if isinstance(s, TrainStage):
            d = Path(ctx.results[s.name].marker.get("work_dir") or ctx.results[s.name].dir)
            phase = "search" if ctx.results[s.name].dir == ctx.fold_dir else s.name
            res["resumed"] += [{"phase": phase, **r} for r in read_resumes(d)] + \
                [{"phase": f"{phase}-refit" if phase != "search" else "refit", **r} for r in read_resumes(d / "refit")]
    res.update(ctx.recipe.fold_extras(ctx))
    res["features"] = check_features(cfg, stages, records)
    atomic_write_text(ctx.fold_dir / "predictions.csv", pred_table.to_csv(index=False))
    if "embedding" in test:
        embeddings = np.asarray(test["embedding"], dtype=np.float32)
        atomic_write(ctx.fold_dir / "test_embeddings.npy", lambda fh: np.save(fh, embeddings))
    return res  # fit_fold writes result.json (the fold's resume marker) with its time


def check_features(cfg: dict, stages: list, records: dict) -> dict:
    """The fold's feature-stage record: per view, what every training stage received. A config that asks for speaker
    normalisation whose models did not all receive normalised features is an error (never reported as applied)."""
    trained = [s.name for s in stages if isinstance(s, TrainStage)]
    views: dict[str, dict] = {}
    for name in trained:
        for view, r in records[name].items():
            v = views.setdefault(view, {**r, "normalize": r["normalize"], "stages": {}})
            v["stages"][name] = r["normalize"]
    for view, v in views.items():
        modes = set(v["stages"].values())
        v["normalize"] = modes.pop() if len(modes) == 1 else "partial"
        v.pop("normalised_items", None)
        asked = cfg["features"]["normalize"]
        if asked not in ("none", "auto") and v["normalize"] != asked:  # auto: the chosen candidate's (selection)
            raise ConfigError(
                f"recipe {cfg['recipe']!r}: features.normalize: {asked!r} was asked for, but the feature stage of view "
                f"{view!r} served normalised features to these stages only: "
                f"{[n for n, m in v['stages'].items() if m == asked]} (of {list(v['stages'])}); the recipe builds "
                f"datasets or models past the feature stage")
    return views
