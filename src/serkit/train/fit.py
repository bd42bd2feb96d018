"""The fold runner: feature stage, the recipe's stages (Lightning Trainer with checkpointing / early stopping on
validation, resume), scoring of the test part, the fold result.

Model selection and early stopping look at the validation part only; the test part is scored once, with the
checkpoint that validation chose.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from serkit.data.features import collate, loader_workers
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.io import atomic_path, atomic_write_json, load_tensors
from serkit.precision import run_precision
from serkit.protocols import Fold, check_leakage
from serkit.recipes.catalog import get_recipe
from serkit.train import select as choose
from serkit.train.datasets import (
    as_feature_stage,
    load_loop_encoder,
    model_spec,
)
from serkit.train.fold_result import check_features, feature_record, fold_result, normalised_state
from serkit.train.logs import _best_epoch, _best_val
from serkit.train.module import SERModule
from serkit.train.scoring import inference_device, predict_outputs
from serkit.train.stages import (
    StageContext,
    StageResult,
    Step,
    TrainStage,
    load_outputs,
    read_marker,
    save_outputs,
    schedule,
    stable_hash,
    trained_state,
)
from serkit.train.threads import torch_threads, training_threads
from serkit.train.trainer import (
    _quiet_lightning,
    fit_resumable,
    make_trainer,
)

log = logging.getLogger("serkit")


def train_module(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path, select: bool = True,
                 stage: TrainStage | None = None, ctx: StageContext | None = None):
    """Train ``stage`` (default: the recipe's model and the config's objective) on ``fold.train`` with selection on
    ``fold.val``; resumes from ``fold_dir/checkpoints/last.ckpt``. ``source``: the feature stage (or a store / None).

    Returns ``(module with the selected weights, labels, recipe, (train, val, test) datasets, eval kwargs)``.
    """
    _quiet_lightning()
    stage = stage or TrainStage()
    if stage.train:
        cfg = {**cfg, "train": {**cfg["train"], **stage.train}}
    if stage.objective is not None:
        cfg = {**cfg, "objective": list(stage.objective)}
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["train"]["seed"])
    L.seed_everything(seed + fold.index, workers=True, verbose=False)
    recipe = get_recipe(cfg["recipe"])
    labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"], fold.train)
    features = as_feature_stage(cfg, manifest, fold, source) if source is not None or ctx is None else \
        ctx.feature()
    if stage.datasets is not None:
        if fold is not ctx.fold:  # a refit on train + validation: the hook sees that fold and its feature stage
            import dataclasses

            ctx = dataclasses.replace(ctx, fold=fold, features={**ctx.features, "main": features})
        train_ds, val_ds, test_ds = stage.datasets(ctx, labels)
    else:
        train_ds, val_ds, test_ds = recipe.build_datasets(cfg, manifest, fold, labels, features)
    encoder = layers = None
    if cfg["features"]["source"] == "waveform" and stage.model is None:
        encoder, layers = load_loop_encoder(cfg)
    spec = model_spec(cfg, labels, features, encoder, layers)
    L.seed_everything(seed + fold.index, workers=True, verbose=False)  # the model's initial weights: from the seed
    model = stage.model(ctx, spec) if stage.model is not None else recipe.build_model(cfg, spec)
    if encoder is not None:
        from serkit.models.encoder_model import EncoderDownstream

        model = EncoderDownstream(encoder, model, layers, cfg["encoder"].get("finetune", False), adapters=True)
    if stage.init is not None:
        stage.init(ctx, model)
    objective = recipe.build_objective(cfg, labels, train_ds.enc, spec)
    module = SERModule(model, objective, labels, {**cfg["train"], "seed": seed + fold.index},
                       batch_hook=recipe.batch_hook(cfg, labels))
    t = cfg["train"]
    sampler = recipe.train_sampler(cfg, train_ds, seed + fold.index)
    module.batching = _batching(sampler)
    if isinstance(sampler, tuple) and sampler[0] == "batch_sampler":
        train_dl = DataLoader(train_ds, batch_sampler=sampler[1], collate_fn=collate, **loader_workers(t))
    else:
        train_dl = DataLoader(train_ds, batch_size=t["batch_size"], sampler=sampler, collate_fn=collate,
                              drop_last=len(train_ds) > t["batch_size"], **loader_workers(t))
    eval_kw = dict(batch_size=t["eval_batch_size"], shuffle=False, collate_fn=collate, **loader_workers(t))
    val_dl = DataLoader(val_ds, **eval_kw)
    trainer = make_trainer(cfg, fold_dir)
    fit_resumable(trainer, module, train_dl, val_dl, fold_dir)
    pick = fold_dir / "checkpoints" / ("last.ckpt" if stage.select == "last" else "best.ckpt")
    if select and pick.exists():
        module.load_state_dict(load_tensors(pick)["state_dict"])
    module.spec = spec
    return module, labels, recipe, (train_ds, val_ds, test_ds), eval_kw


def _batching(sampler) -> str:
    """What a stage's training batches were, for its record: ``shuffled``, ``length-grouped (groups of K
    batches)`` or the recipe's own sampler's class."""
    from serkit.data.samplers import LengthGroupedBatchSampler, SeededShuffleSampler

    obj = sampler[1] if isinstance(sampler, tuple) else sampler
    if isinstance(obj, LengthGroupedBatchSampler):
        return f"length-grouped (groups of {obj.group} batches)"
    if isinstance(obj, SeededShuffleSampler):
        return "shuffled"
    return type(obj).__name__


def fit_fold(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: str | Path) -> dict:
    """Run the recipe's stages on ``fold`` (train on ``fold.train``, select on ``fold.val``), score ``fold.test``;
    resumable; returns the fold result.

    ``source``: the fold's feature store(s): one store, ``{view: store}`` for multi-view recipes, or None
    (waveforms). The result carries ``seconds``: the wall time of the call that produced it (a finished fold is
    read back as it was, so a resumed run still reports what each fold cost) and ``features``: what the feature
    stage applied."""
    fold_dir = Path(fold_dir)
    result_path = fold_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    t0 = time.time()
    with torch_threads(training_threads(cfg)):
        res = _fit_fold(cfg, manifest, fold, source, fold_dir)
        # threads: CPU sums are split across torch's threads, so another thread count rounds differently (and a
        # chaotic stage can land on another epoch); the fold says what it ran with
        res = {**res, "seconds": round(time.time() - t0, 1), "precision": run_precision(cfg, source),
               "threads": torch.get_num_threads()}
    atomic_write_json(result_path, res)
    return res


def fold_context(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path) -> StageContext:
    """The fold's labels, feature stage per view and stage folder root."""
    from serkit.train.feature_stage import FeatureStage

    recipe = get_recipe(cfg["recipe"])
    stores = source if isinstance(source, dict) else {"main": source}
    views = {v["name"]: v for v in recipe.feature_views(cfg)}
    ids = fold.train + fold.val + fold.test
    features = {}
    for name, store in stores.items():
        opts = {**cfg["features"], **(views.get(name, {}).get("features") or {})}
        if store is None and opts["normalize"] != "none" and cfg["features"]["source"] == "waveform":
            raise ConfigError("features.normalize with features.source: waveform needs the speakers' statistics "
                              "from the feature cache; the runner fills it (internal error: no store given)")
        features[name] = FeatureStage(opts, store, manifest, ids, name=name, reference_ids=fold.train)
    root = recipe.stage_root(cfg)
    root = Path(root) / f"fold{fold.index}" if root else fold_dir
    labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"], fold.train)
    return StageContext(cfg, manifest, fold, labels, recipe, features, fold_dir, root,
                        int(cfg["train"]["seed"]) + fold.index)


def _fit_fold(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path) -> dict:
    check_leakage(fold, manifest)
    ctx, stages, records = fit_stages(cfg, manifest, fold, source, fold_dir)
    return fold_result(ctx, stages, records)


def fit_stages(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path):
    """Run the recipe's stage list on ``fold``; ``(context with every stage's result, stages, feature records)``."""
    ctx = fold_context(cfg, manifest, fold, source, fold_dir)
    stages = ctx.recipe.stages(cfg)
    if not stages:
        raise ConfigError(f"recipe {cfg['recipe']!r} declares no stages")
    single = len(stages) == 1 and isinstance(stages[0], TrainStage)
    records: dict[str, dict] = {}
    before = [ctx.cfg["train"]]
    for stage in stages:
        ctx.stage = stage
        if isinstance(stage, TrainStage):
            result = _run_train_stage(ctx, stage, in_fold_dir=single, upstream=before)
        else:
            result = _run_step(ctx, stage, upstream=before)
        records[stage.name] = result.marker["features"]
        ctx.results[stage.name] = result
        before.append(result.key)
    check_features(cfg, stages, records)
    return ctx, stages, records


def select_on_validation(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path,
                         stage: TrainStage | None = None, ctx: StageContext | None = None):
    """Train every candidate of :func:`serkit.train.select.candidates` on ``fold.train``, keep the best on
    ``fold.val`` (never the test part). Returns ``(chosen config, its folder, selection record or None, what
    train_module returned for it)``; with nothing to choose, one training in ``fold_dir`` as before."""
    cands, skipped = choose.drop_confounded_speaker_statistics(choose.candidates(cfg), cfg, manifest, fold.train)
    if len(cands) == 1:
        trained = train_module(cands[0][1], manifest, fold, source, fold_dir, stage=stage, ctx=ctx)
        record = None if skipped is None else {"grid": choose.grid(cfg), "chosen": cands[0][0], "note": skipped}
        return cands[0][1], fold_dir, record, trained
    monitor = cfg["train"]["monitor"]
    scores, kept, kept_i = [], None, None
    for i, (choice, c) in enumerate(cands):
        d = fold_dir / "select" / choose.slug(choice)
        trained = train_module(c, manifest, fold, source, d, stage=stage, ctx=ctx)
        scores.append(_best_val(d, monitor))
        if choose.best(scores) == i:
            kept, kept_i = trained, i
        log.info("fold %d: candidate %s: best %s %s", fold.index, choose.slug(choice), monitor, scores[-1])
    choice, chosen = cands[kept_i]
    record = {"grid": choose.grid(cfg), "monitor": monitor, "chosen": choice,
              "candidates": [{"choice": ch, "val": v} for (ch, _), v in zip(cands, scores, strict=True)]}
    if skipped is not None:
        record["note"] = skipped
    return chosen, fold_dir / "select" / choose.slug(choice), record, kept


def _stage_base(ctx: StageContext) -> dict:
    cfg, fold = ctx.cfg, ctx.fold
    return {"fold": stable_hash([sorted(map(str, fold.train)), sorted(map(str, fold.val)),
                                 sorted(map(str, fold.test))]),
            "seed": ctx.seed, "encoder": cfg["encoder"], "source": cfg["features"]["source"],
            "features": {k: v for k, v in cfg["features"].items() if k not in ("cache_dir", "preload")},
            "classes": list(ctx.labels.classes), "targets": list(ctx.labels.targets), "task": cfg["task"]}


def _run_train_stage(ctx: StageContext, stage: TrainStage, in_fold_dir: bool, upstream: list) -> StageResult:
    cfg = ctx.cfg
    t_cfg = {**cfg["train"], **stage.train}
    key = stable_hash([_stage_base(ctx), stage.name, stage.key if stage.key is not None else
                       [cfg["model"], cfg["recipe_options"], cfg.get("augment")],
                       stage.objective if stage.objective is not None else cfg["objective"], schedule(t_cfg),
                       stage.select, stage.refit, upstream[1:]])
    stage_dir = ctx.fold_dir if in_fold_dir else ctx.root / f"{stage.name}-{key}"
    if not in_fold_dir:
        marker = read_marker(stage_dir, key)
        if marker is not None:
            outputs = load_outputs(stage_dir / "outputs.npz") if (stage_dir / "outputs.npz").exists() else None
            return StageResult(stage.name, stage_dir, key, marker, outputs)
    t0, n0 = time.time(), normalised_state(ctx)
    features = next(iter(ctx.features.values()))
    selection = None
    if in_fold_dir:  # the one training of a single-stage recipe: candidates chosen on validation (train.select)
        cfg, work_dir, selection, trained = select_on_validation(cfg, ctx.manifest, ctx.fold, features, stage_dir,
                                                                 stage, ctx)
    else:
        if choose.grid(cfg):
            raise ConfigError(f"recipe {cfg['recipe']!r} has several stages; features.normalize: auto and "
                              "train.select are not supported there")
        work_dir = stage_dir
        trained = train_module(cfg, ctx.manifest, ctx.fold, features, stage_dir, stage=stage, ctx=ctx)
    module, _, _, (train_ds, val_ds, test_ds), eval_kw = trained
    monitor = t_cfg["monitor"]
    marker = {"stage": stage.name, "key": key, "best_epoch": _best_epoch(work_dir, monitor),
              "best_val": _best_val(work_dir, monitor), "work_dir": str(work_dir),
              "normalisation": {"mode": cfg["features"]["normalize"]},
              "batching": getattr(module, "batching", None)}
    if getattr(train_ds, "normalizer", None) is not None:
        marker["normalisation"]["fallback_speakers"] = list(train_ds.normalizer.fallback_speakers)
    if selection is not None:
        marker["selection"] = selection
    val_before_refit = None
    if stage.refit and stage.score and len(val_ds):
        # the validation outputs of the model validation selected: the refit trains on these utterances, so its
        # own outputs on them would say nothing (calibration and validation figures read these)
        val_before_refit = predict_outputs(module, DataLoader(val_ds, **eval_kw), inference_device(cfg["train"]))
    if stage.refit:
        module, test_ds, eval_kw = refit_on_train_and_val(ctx, cfg, stage, features, work_dir, marker)
    outputs = None
    if stage.score:
        device = inference_device(cfg["train"])
        outputs = {part: predict_outputs(module, DataLoader(ds, **eval_kw), device)
                   for part, ds in (("val", val_ds), ("test", test_ds)) if len(ds)
                   and not (part == "val" and val_before_refit is not None)}
        if val_before_refit is not None:
            outputs["val"] = val_before_refit
    marker["seconds"] = round(time.time() - t0, 1)
    marker["features"] = feature_record(ctx, n0)
    if selection is not None and ctx.cfg["features"]["normalize"] == "auto":
        for v in marker["features"].values():  # the chosen candidate's own feature stage applied it
            v["normalize"] = cfg["features"]["normalize"]
    result = StageResult(stage.name, stage_dir, key, marker, outputs, module=module)
    if not in_fold_dir:
        save_stage(stage_dir, module, outputs, marker)
    return result


def _run_step(ctx: StageContext, step: Step, upstream: list) -> StageResult:
    key = stable_hash([_stage_base(ctx), step.name, step.key, upstream[1:]])
    stage_dir = ctx.root / f"{step.name}-{key}"
    marker = read_marker(stage_dir, key)
    if marker is not None:
        arrays = dict(np.load(stage_dir / "arrays.npz")) if (stage_dir / "arrays.npz").exists() else None
        outputs = load_outputs(stage_dir / "outputs.npz") if (stage_dir / "outputs.npz").exists() else None
        return StageResult(step.name, stage_dir, key, marker, outputs, arrays)
    t0, n0 = time.time(), normalised_state(ctx)
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx.stage_dir = stage_dir
    out = dict(step.run(ctx) or {})
    arrays, outputs = out.pop("arrays", None), out.pop("outputs", None)
    files = []
    if arrays is not None:
        np.savez(stage_dir / "arrays.npz", **arrays)
        files.append("arrays.npz")
    if outputs is not None:
        save_outputs(stage_dir / "outputs.npz", outputs)
        files.append("outputs.npz")
    marker = {"stage": step.name, "key": key, **out, "seconds": round(time.time() - t0, 1), "files": files,
              "features": feature_record(ctx, n0)}
    atomic_write_json(stage_dir / "stage.json", marker)
    return StageResult(step.name, stage_dir, key, marker, outputs, arrays)


def refit_on_train_and_val(ctx: StageContext, cfg: dict, stage: TrainStage, features, work_dir: Path,
                           marker: dict) -> tuple:
    """Refit ``stage`` on train + validation for the epoch count that validation chose (as GridSearchCV's refit;
    the test part is still never looked at before scoring), in ``work_dir/refit``. Records ``refit_epochs`` in
    ``marker``; returns ``(module, test dataset, eval loader kwargs)``."""
    import copy

    refit_epochs = (marker["best_epoch"] or 0) + 1
    rstage = copy.copy(stage)
    rstage.train = {**stage.train, "epochs": refit_epochs, "min_epochs": refit_epochs, "patience": refit_epochs + 1}
    fold = ctx.fold
    whole = Fold(fold.index, fold.protocol, fold.speaker_independent, fold.train + fold.val, fold.val, fold.test,
                 fold.test_speakers, fold.val_speakers)
    module, _, _, (_, _, test_ds), eval_kw = train_module(
        cfg, ctx.manifest, whole, as_feature_stage(cfg, ctx.manifest, whole, features), work_dir / "refit",
        select=False, stage=rstage, ctx=ctx)
    marker["refit_epochs"] = refit_epochs
    return module, test_ds, eval_kw


def save_stage(stage_dir: Path, module, outputs: dict | None, marker: dict) -> None:
    """A finished stage of a multi-stage recipe, kept for reuse: its trained state, its outputs and (last, so that
    a killed save leaves no marker) ``stage.json``; the checkpoints it replaces go."""
    import shutil

    from safetensors.torch import save_file

    files = ["state.safetensors"]
    with atomic_path(stage_dir / "state.safetensors") as tmp:  # whole or absent; the umask's mode, not 0600
        save_file(trained_state(module.model), str(tmp))
    if outputs is not None:
        save_outputs(stage_dir / "outputs.npz", outputs)
        files.append("outputs.npz")
    marker["files"] = files
    atomic_write_json(stage_dir / "stage.json", marker)
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the saved state replaces them
