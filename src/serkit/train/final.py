"""``serkit train``: one model on every speaker of the corpus, saved as a model folder for prediction.

Protocol (as scikit-learn's ``GridSearchCV(refit=True)``): a first run holds out validation speakers
(``protocol.val_speakers`` / ``val_fraction``) and early stopping picks the epoch count on them; then the model is
trained again on all speakers for that many epochs. The validation run's figures stay in the folder
(``validation.json``). ``refit=False`` keeps the validation run's best model instead (trained without the
validation speakers).

A speaker-normalised config (``features.normalize: speaker``) trains two heads on the same features: the
speaker-normalised one (``model.safetensors``, used when the speaker's statistics can be estimated from enrolment
audio) and one on global features (``model-global.safetensors``, used for a single clip of an unknown speaker).

A model folder holds ``config.yaml``, ``model.safetensors`` [+ ``model-global.safetensors``], ``labels.json``,
``encoder.json`` (encoder id, revision, feature mode, layers, precision), ``meta.json`` (model spec, heads,
training set, resolved feature and training precision),
``validation.json`` and ``README.md`` (the model card, :mod:`serkit.model_card`).
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import pandas as pd

from serkit.config import dump, load_config
from serkit.errors import ConfigError
from serkit.io import atomic_path, atomic_write_json, atomic_write_text
from serkit.precision import run_precision
from serkit.protocols import Fold, carve_validation, label_column

#: head name -> (features.normalize it is trained with, weights file)
HEAD_FILES = {"speaker": "model.safetensors", "global": "model-global.safetensors"}


def heads_for(cfg: dict) -> list[str]:
    """The heads a config trains: ``["speaker", "global"]`` with speaker normalisation, else ``["global"]``."""
    return ["speaker", "global"] if cfg["features"]["normalize"] == "speaker" else ["global"]


def head_file(head: str, heads: list[str]) -> str:
    """Weights file of ``head``: the first (main) head is ``model.safetensors``."""
    return "model.safetensors" if head == heads[0] else HEAD_FILES[head]


def validation_split(cfg: dict, manifest: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """``(train ids, validation ids, validation speakers)`` of ``serkit train``; a :class:`ConfigError` in one line
    when the corpus has too few speakers for the protocol's validation options (checked before extraction)."""
    ids = manifest["id"].astype(str).tolist()
    opts = dict(cfg["protocol"] or {})
    try:
        classes = label_column(opts, manifest) if cfg["task"] == "classification" else None
        return carve_validation(manifest, ids, opts, int(cfg["train"]["seed"]), classes)
    except ConfigError as exc:
        n = manifest["speaker"].astype(str).nunique()
        raise ConfigError(
            f"serkit train holds out validation speakers to choose the epoch count, but the corpus has {n} "
            f"speaker(s): {exc} (give speakers: a manifest 'speaker' column, or DIR/<class>/<speaker>/*.wav for a "
            f"folder corpus; or set protocol.val_speakers)") from None


def _metric_curve(fold_dir: Path, monitor: str) -> list[dict]:
    from serkit.train.logs import read_fold_metrics

    df = read_fold_metrics(fold_dir)
    if df is None or monitor not in df:
        return []
    v = df.dropna(subset=[monitor])
    return [{"epoch": int(e), monitor: round(float(m), 6)} for e, m in zip(v["epoch"], v[monitor], strict=True)]


def _train_head(cfg: dict, manifest: pd.DataFrame, split, source, work: Path, refit: bool, log):
    """Validation run (epoch count), then the refit on every speaker; returns (model, spec, labels, record).

    A recipe with several stages (GMP-ATL, IF-MVSE) runs its stage list on the validation split through the fold
    runner and saves what the recipe's ``saved_model`` makes of it (default: the last training stage's selected
    model; IF-MVSE: every score set and the combination weights searched on validation). No refit: each stage
    chose its own epochs on the validation speakers, and a step (IF-MVSE's weights) was fitted on their outputs."""
    from serkit.recipes.base import Recipe
    from serkit.recipes.catalog import get_recipe
    from serkit.train.fit import fit_stages, select_on_validation, train_module
    from serkit.train.stages import Step, TrainStage

    train, val, val_spk = split
    monitor = cfg["train"]["monitor"]
    fold = Fold(0, "serkit-train", True, train, val, [], [], val_spk)
    recipe = get_recipe(cfg["recipe"])
    stages = recipe.stages(cfg)
    if isinstance(stages[-1], Step) and type(recipe).saved_model is Recipe.saved_model:
        raise ConfigError(f"recipe {cfg['recipe']!r} ends in the step {stages[-1].name!r}, which a single saved "
                          f"model cannot replay (the recipe declares no saved_model); use serkit cv")
    if len(stages) > 1:
        ctx, stages, _ = fit_stages(cfg, manifest, fold, source, work / "validation")
        model, spec = ctx.recipe.saved_model(ctx, stages)
        trained = [s.name for s in stages if isinstance(s, TrainStage)]
        final = spec.extra.get("final_stage", trained[-1])
        last = ctx.results[stages[-1].name].marker
        record = {"monitor": monitor, "val_speakers": val_spk, "n_train": len(train), "n_val": len(val),
                  "stages": [s.name for s in stages], "refit": False, "final_stage": final,
                  "stage_epochs": {n: ctx.results[n].marker.get("best_epoch") for n in trained},
                  "stage_val": {n: ctx.results[n].marker.get("best_val") for n in trained},
                  "best_epoch": ctx.results[final].marker.get("best_epoch"),
                  "best_val": ctx.results[final].marker.get("best_val")}
        if isinstance(stages[-1], Step):  # its validation figure: what the step chose on the validation outputs
            step = {k: v for k, v in last.items() if k not in ("key", "files", "features", "stage")}
            record["steps"] = {stages[-1].name: step}
        outputs = ctx.results[final].outputs
        if cfg["task"] == "classification" and outputs and "val" in outputs:
            record["calibration"] = _calibration(outputs["val"], ctx.labels, manifest, val)
        return model, spec, ctx.labels, record
    # the config's train.select grid is chosen on the validation speakers, as serkit cv does per fold
    cfg, val_dir, selection, (module, labels, _, datasets, eval_kw) = select_on_validation(
        cfg, manifest, fold, source, work / "validation")
    calibration = None
    if cfg["task"] == "classification" and len(datasets[1]):  # temperature + abstain threshold, validation only
        from torch.utils.data import DataLoader

        from serkit.train.scoring import inference_device, predict_outputs

        out = predict_outputs(module, DataLoader(datasets[1], **eval_kw), inference_device(cfg["train"]))
        calibration = _calibration(out, labels, manifest, val)
    curve = _metric_curve(val_dir, monitor)
    best = max(curve, key=lambda r: r[monitor]) if curve else None
    record = {"monitor": monitor, "val_speakers": val_spk, "n_train": len(train), "n_val": len(val),
              "best_epoch": best["epoch"] if best else None, "best_val": best[monitor] if best else None,
              "epochs_run": len(curve), "curve": curve, "refit": bool(refit and best is not None)}
    if calibration is not None:
        record["calibration"] = calibration
    if selection is not None:
        record["selection"] = selection
        log(f"  chosen on validation: {', '.join(f'{k}={v}' for k, v in selection['chosen'].items())}")
    if record["refit"]:
        epochs = best["epoch"] + 1
        rcfg = copy.deepcopy(cfg)
        rcfg["train"].update(epochs=epochs, min_epochs=epochs, patience=epochs + 1)
        everyone = Fold(0, "serkit-train-refit", True, train + val, val, [], [], val_spk)
        speeds = cfg["features"].get("speed_perturb")
        copies = f" (+ their copies at {', '.join(f'{f:g}x' for f in speeds)} speed)" if speeds else ""
        log(f"  refit on all {len(train) + len(val)} utterances{copies} for {epochs} epoch(s) (best validation "
            f"{monitor} {best[monitor]:.4f} at epoch {best['epoch']})")
        module, labels, *_ = train_module(rcfg, manifest, everyone, source, work / "refit", select=False)
        record.update(refit_epochs=epochs, n_refit=len(train) + len(val))
    return module.model, module.spec, labels, record


def _calibration(val_outputs: dict, labels, manifest: pd.DataFrame, val_ids) -> dict:
    """The head's temperature and abstain threshold from its outputs on the validation speakers (the model applies
    the temperature to its probabilities in prediction; see :mod:`serkit.calibration`)."""
    from serkit.calibration import calibration_record

    rows = manifest.set_index("id").loc[[str(i) for i in val_ids]].reset_index()
    return calibration_record(val_outputs, labels.encode(rows)["emotion"])


def train_final(config, out_dir, overrides: list[str] | None = None, log=print, refit: bool = True,
                cv_results: str | Path | None = None) -> Path:
    """Train the model folder ``out_dir`` from ``config`` (path or dict) with ``overrides``.

    ``refit``: after the validation run, train again on all speakers for the chosen epoch count (default).
    ``cv_results``: a ``results.json`` of ``serkit cv`` with the same config, whose mean ± std the model card quotes.
    """
    from serkit.train.cv import feature_source, load_experiment_manifest, usable_manifest

    cfg = load_config(config, overrides)
    if cfg["features"]["normalize"] == "auto":
        # a trained model has both heads (speaker-normalised and global); prediction uses the speaker head where
        # the speaker's speech is given (--enroll) and the global head otherwise: what auto chooses between
        cfg["features"]["normalize"] = "speaker"
    cv = _read_cv_results(cv_results)
    out = Path(out_dir)
    manifest = load_experiment_manifest(cfg)
    validation_split(cfg, manifest)  # fail on too few speakers before any extraction
    heads = heads_for(cfg)
    if len(heads) > 1 and cfg["features"]["source"] != "cache":
        raise ConfigError("features.normalize: speaker needs features.source: cache")
    work = _work_dir(out, cfg)
    source = feature_source(cfg, manifest, out)
    manifest = usable_manifest(source, manifest, log)
    split = validation_split(cfg, manifest)
    t0 = time.time()
    records, spec, labels, threads = _train_heads(cfg, heads, manifest, split, source, work, out, refit, log)
    atomic_write_text(out / "config.yaml", dump(cfg))
    atomic_write_json(out / "labels.json", labels.to_dict())
    precision = run_precision(cfg, next(iter(source.values())) if isinstance(source, dict) else source)
    atomic_write_json(out / "encoder.json", encoder_record(cfg, source, precision["features"]))
    meta = {**_model_meta(cfg, spec, records, heads, split, manifest, precision, t0),
            "threads": threads}  # torch CPU threads of the heads' training
    atomic_write_json(out / "meta.json", meta)
    atomic_write_json(out / "validation.json", {"protocol": _validation_protocol(records[heads[0]], meta["refit"]),
                                                "heads": records, **({"cv": _cv_summary(cv)} if cv else {})})
    from serkit.model_card import write_model_card

    write_model_card(out)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints are not part of the product
    log(f"trained {', '.join(heads)} head(s) on {meta['n_train']} utterances of {meta['n_speakers']} speakers "
        f"(validation: {len(split[1])} utterances of {len(split[2])} speakers) in {meta['train_wall_seconds']:.0f} s")
    return out


def _read_cv_results(cv_results: str | Path | None) -> dict | None:
    """The parsed ``results.json`` of ``serkit cv`` given as ``--cv-results`` (None when not given)."""
    if cv_results is None:
        return None
    import json

    try:
        return json.loads(Path(cv_results).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--cv-results {cv_results}: cannot read a results.json ({exc})") from None


def _work_dir(out: Path, cfg: dict) -> Path:
    """``out/work`` for checkpoints, holding ``cfg`` as ``config.yaml``; emptied first when it holds another
    config's checkpoints (never resumed from)."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    from serkit.train.cv import same_config

    if (work / "config.yaml").exists() and not same_config((work / "config.yaml").read_text(), cfg):
        shutil.rmtree(work)  # a default added since the checkpoints were written is the same config
    work.mkdir(exist_ok=True)
    atomic_write_text(work / "config.yaml", dump(cfg))
    return work


def _train_heads(cfg: dict, heads: list[str], manifest: pd.DataFrame, split, source, work: Path, out: Path,
                 refit: bool, log) -> tuple[dict, object, object, list[int]]:
    """Train each of ``heads`` (features speaker-normalised or not) and save its weights in ``out``; returns
    ``(records per head, the last head's model spec, its label map, torch CPU thread counts used)``."""
    from serkit.train.cv import FEATURE_NORMALISATION
    from serkit.train.threads import torch_thread_count, torch_threads, training_threads

    records, spec, labels, threads_used = {}, None, None, set()
    for head in heads:
        hcfg = copy.deepcopy(cfg)
        hcfg["features"]["normalize"] = "speaker" if head == "speaker" else "none"
        log(f"training the {head} head ({FEATURE_NORMALISATION[hcfg['features']['normalize']].split(':')[0]} "
            f"features)")
        with torch_threads(training_threads(hcfg)):
            model, spec, labels, record = _train_head(hcfg, manifest, split, source, work / head, refit, log)
            threads_used.add(torch_thread_count())
        name = head_file(head, heads)
        _save_weights(model, out / name)
        records[head] = {**record, "file": name}
        if spec.extra.keys() - {"encoder"}:  # what build_model needs beyond the config (e.g. IF-MVSE's ensemble)
            records[head]["extra"] = {k: v for k, v in spec.extra.items() if k != "encoder"}
    return records, spec, labels, sorted(threads_used)


def _save_weights(model, path: Path) -> None:
    """``model``'s state (LoRA adapters merged into the encoder's weights, CPU tensors) as safetensors at
    ``path``, atomically."""
    from safetensors.torch import save_file

    from serkit.models.finetune import merge_adapters

    model = merge_adapters(model)  # LoRA folded into the encoder's weights: the folder holds a plain encoder
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _model_meta(cfg: dict, spec, records: dict, heads: list[str], split, manifest: pd.DataFrame, precision: dict,
                t0: float) -> dict:
    """``meta.json``: model spec, heads and their calibration, training set (counts, seconds, hours), precision and
    the wall time since ``t0`` (``time.time()`` seconds). Pops each record's ``extra`` into ``head_extra``."""
    from serkit.version import __version__

    n_all = len(split[0]) + len(split[1])
    extra = {h: r.pop("extra") for h, r in records.items() if "extra" in r}  # per head: build_model's spec.extra
    return {
        "serkit_version": __version__,
        "spec": {"task": spec.task, "num_outputs": spec.num_outputs, "num_layers": spec.num_layers,
                 "hidden_size": spec.hidden_size, "num_speakers": spec.num_speakers, "class_names": spec.class_names,
                 "layers": spec.layers},
        "heads": {h: r["file"] for h, r in records.items()},
        # per head: temperature of its probabilities and the confidence below which it may abstain (validation)
        "calibration": {h: {k: r["calibration"][k] for k in ("temperature", "abstain_threshold", "abstain_target")}
                        for h, r in records.items() if r.get("calibration")},
        **({"head_extra": extra} if extra else {}),
        "n_train": n_all if records[heads[0]]["refit"] else len(split[0]),
        "n_speakers": int(manifest["speaker"].astype(str).nunique()),
        "refit": records[heads[0]]["refit"],
        "val_speakers": split[2],
        "precision": precision,
        "train_seconds_max": float(manifest["duration"].max()),
        "train_hours": round(float(manifest["duration"].sum()) / 3600, 3),
        "class_counts": {str(k): int(v) for k, v in manifest["emotion"].astype(str).value_counts().sort_index().items()}
        if cfg["task"] == "classification" else {},
        "train_wall_seconds": round(time.time() - t0, 1),
    }


def _validation_protocol(main_record: dict, refit: bool) -> str:
    """``validation.json``'s one-sentence protocol for the main head's record."""
    if "stages" in main_record:
        return (f"validation speakers held out; the stages {', '.join(main_record['stages'])} run on the "
                f"other speakers, each training stage keeping its best validation epoch (steps fitted on the "
                f"validation outputs); no refit on all speakers")
    return ("validation speakers carved from all speakers, then refit on all speakers for the chosen epoch "
            "count" if refit else "validation speakers held out; the best validation epoch kept")


def encoder_record(cfg: dict, source, precision: str) -> dict:
    """``encoder.json``: the store's encoder spec (id, revision, mode, stored layers, ...), the config's layer spec and
    the features' precision; for a multi-view recipe (``source`` ``{view: store}``) one such record per view under
    ``views`` (and the encoder ids joined as ``encoder``)."""
    if isinstance(source, dict):
        views = {}
        for name, store in source.items():
            views[name] = {**dict(store.spec), "precision": getattr(store, "precision", precision)}
        return {"encoder": " + ".join(v["encoder"] for v in views.values()), "precision": precision,
                "views": views}
    level = {"level_db": float(cfg["encoder"]["level_db"])} if cfg["encoder"].get("level_db") is not None else {}
    enc = dict(source.spec) if source is not None else {"encoder": cfg["encoder"]["id"], "mode": cfg["encoder"]["mode"],
                                                        **level}
    enc["layers_spec"] = cfg["encoder"]["layers"]
    enc["precision"] = precision
    return enc


def _cv_summary(cv: dict) -> dict:
    """What the model card quotes of a ``serkit cv`` results.json."""
    keep = ("name", "protocol", "speaker_independent", "feature_normalisation", "mean", "std")
    return {**{k: cv[k] for k in keep if k in cv}, "n_folds": len(cv.get("folds", []))}
