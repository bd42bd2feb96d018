"""The fold runner: feature stage, the recipe's stages (Lightning Trainer with checkpointing / early stopping on
validation, resume), scoring of the test part, the fold result.

Model selection and early stopping look at the validation part only; the test part is scored once, with the
checkpoint that validation chose.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from serkit.data.features import collate, loader_workers, to_device
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError, SerkitError
from serkit.io import atomic_path, atomic_write, atomic_write_json, atomic_write_text, load_tensors
from serkit.metrics import classification_metrics, confusion, regression_metrics
from serkit.models.registry import ModelSpec
from serkit.precision import lightning_precision, run_precision
from serkit.protocols import Fold, check_leakage
from serkit.recipes.base import get_recipe
from serkit.train import select as choose
from serkit.train.logs import _best_epoch, _best_val, _keep_old_metrics, read_fold_metrics  # noqa: F401
from serkit.train.module import SERModule
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

log = logging.getLogger("serkit")


def _quiet_lightning():
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*sync_dist.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*treespec.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")


class RunFolderCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint whose state survives moving the run folder.

    Lightning forgets the best score when the checkpoint folder's path changed since the save (a run folder that
    was copied or downloaded), so a resumed run would take its next epoch as the best; here the saved paths are
    re-based onto the current folder instead."""

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def rebase(p):
                return str(Path(self.dirpath) / Path(p).name) if isinstance(p, str) and p.startswith(old) else p

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{k: rebase(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                    "last_model_path") if k in state_dict},
                          "best_k_models": {rebase(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


#: ``train.logger`` -> the package Lightning's logger needs (None: always there)
LOGGER_PACKAGES = {"csv": None, "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def make_loggers(cfg: dict, fold_dir: Path) -> list:
    """Lightning loggers of ``train.logger``: always the CSV logger (``fold_dir/logs/metrics.csv``, which epoch
    selection and the reports read), plus TensorBoard (``fold_dir/tensorboard``) or MLflow (``$MLFLOW_TRACKING_URI``,
    default a file store ``mlruns`` beside the run's folds; experiment = the config's name, run = the fold)."""
    import importlib.util
    import os

    kind = cfg["train"].get("logger", "csv")
    if kind not in LOGGER_PACKAGES:
        raise ConfigError(f"config: train.logger={kind!r} is not one of {tuple(LOGGER_PACKAGES)}")
    need = LOGGER_PACKAGES[kind]
    if need and not any(importlib.util.find_spec(m) for m in need):
        raise ConfigError(f"config: train.logger={kind!r} needs the {need[0]} package, which is not installed: "
                          f"pip install 'serkit[tracking]' (or use train.logger=csv)")
    # CSV rows are written at once: a killed run keeps the epochs it logged (selection and refit read them)
    loggers = [L.pytorch.loggers.CSVLogger(str(fold_dir), name="logs", version="", flush_logs_every_n_steps=1)]
    if kind == "tensorboard":
        loggers.append(L.pytorch.loggers.TensorBoardLogger(str(fold_dir), name="tensorboard", version=""))
    elif kind == "mlflow":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(fold_dir).resolve().parent / "mlruns").as_uri()
        loggers.append(L.pytorch.loggers.MLFlowLogger(experiment_name=str(cfg.get("name", "serkit")),
                                                      run_name=Path(fold_dir).name, tracking_uri=uri))
    return loggers


def make_trainer(cfg: dict, fold_dir: Path, extra_callbacks=()) -> L.Trainer:
    """A Trainer writing ``fold_dir/checkpoints/best.ckpt`` (best validation ``train.monitor``) and ``last.ckpt``
    (every epoch's end: what a killed run resumes from), early stopping on the monitor, and ``fold_dir/logs``."""
    t = cfg["train"]
    monitor = t["monitor"]
    ckpt_dir = fold_dir / "checkpoints"
    best = RunFolderCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                               enable_version_counter=False)
    # Lightning's save_last writes last.ckpt only when a monitored checkpoint is saved (i.e. at the best epoch);
    # a checkpoint without a monitor is written at every epoch's end
    last = RunFolderCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                               enable_version_counter=False)
    early = L.pytorch.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(t["patience"]))
    precision = lightning_precision(t["precision"], t["accelerator"])
    logger = make_loggers(cfg, fold_dir)
    return L.Trainer(
        # train.solver: ridge is fitted in closed form at the start: one epoch (its validation) is the whole run
        max_epochs=1 if t.get("solver") == "ridge" else int(t["epochs"]),
        min_epochs=1 if t.get("solver") == "ridge" else int(t["min_epochs"]), accelerator=t["accelerator"],
        devices=t["devices"], num_nodes=int(t.get("num_nodes", 1)), strategy=t["strategy"], precision=precision,
        callbacks=[best, last, early, *extra_callbacks],
        logger=logger, deterministic=bool(t["deterministic"]) and not torch.cuda.is_available(),
        gradient_clip_val=t["grad_clip"] or None, enable_progress_bar=bool(t["progress"]),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )


#: Written into a run folder when its ``trainer.fit`` returned: a rerun then loads the final weights instead of
#: resuming (Lightning would run another epoch past an early stop).
FINISHED_FILE = "finished.json"
#: Where :func:`fit_resumable` records each resume of a run folder: ``[{"epoch": e, "step": s}, ...]``.
RESUMED_FILE = "resumed.json"


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, train_dl, val_dl, run_dir: Path) -> None:
    """``trainer.fit``, resumed from ``run_dir/checkpoints/last.ckpt`` when a killed run left one.

    Checkpoints are read with ``weights_only=True`` (first by :func:`serkit.io.load_tensors`, which refuses
    anything but tensors and plain values with one line naming the file, then by Lightning), so a planted file
    never runs code. A resume is recorded in ``run_dir/resumed.json`` (the epoch and step it continued after);
    the epochs logged before the kill are kept. A finished run (``finished.json``) is not trained again: the
    module gets the final weights from ``last.ckpt``, as after the uninterrupted call.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = None
    if last.exists():
        try:
            ckpt = load_tensors(last)
        except SerkitError as exc:  # torn (killed while written) or garbled: set it aside, train from the start
            if not getattr(exc, "torn", False):
                raise  # foreign objects (e.g. a planted pickle): refused, never touched
            aside = last.with_name(f"last.torn-{int(time.time())}.ckpt")
            last.rename(aside)
            log.warning("%s; moved aside to %s, training this phase from its start", exc, aside.name)
            ckpt = None
    if ckpt is not None:
        if (run_dir / FINISHED_FILE).exists():
            module.load_state_dict(ckpt["state_dict"])
            return
        resumed = read_resumes(run_dir) + [{"epoch": int(ckpt["epoch"]), "step": int(ckpt["global_step"])}]
        atomic_write_json(run_dir / RESUMED_FILE, resumed)
        del ckpt
        _keep_old_metrics(run_dir)
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(last), weights_only=True)
    else:
        trainer.fit(module, train_dl, val_dl)
    if trainer.state.finished:  # not interrupted
        atomic_write_json(run_dir / FINISHED_FILE, {"epochs": int(trainer.current_epoch),
                                                    "step": int(trainer.global_step)})


def read_resumes(run_dir: Path) -> list[dict]:
    """The resumes :func:`fit_resumable` recorded in ``run_dir`` (empty when it ran uninterrupted)."""
    p = Path(run_dir) / RESUMED_FILE
    return json.loads(p.read_text()) if p.exists() else []


def build_datasets(cfg: dict, manifest: pd.DataFrame, fold: Fold, labels: LabelMap, source):
    """The fold's ``(train, val, test)`` datasets with the feature stage applied.

    ``source``: a :class:`~serkit.train.feature_stage.FeatureStage` (what the runner passes), a feature store, or
    None (waveforms, no cache)."""
    from serkit.data.features import WaveformDataset

    f = cfg["features"]
    features = as_feature_stage(cfg, manifest, fold, source)
    if f["source"] == "waveform" or features.store is None:
        from serkit.audio import CropPad

        crop = CropPad(**f["crop"]) if isinstance(f["crop"], dict) else None
        mk = lambda ids, train: features.with_speaker_stats(WaveformDataset(manifest, ids, labels, crop=crop,
                                                                            train=train))
        return mk(fold.train, True), mk(fold.val, False), mk(fold.test, False)
    return features.datasets(fold, labels)


def as_feature_stage(cfg: dict, manifest: pd.DataFrame, fold: Fold, source):
    """``source`` as a :class:`~serkit.train.feature_stage.FeatureStage` (built over the fold when it is a store)."""
    from serkit.train.feature_stage import FeatureStage

    f = cfg["features"]
    if isinstance(source, FeatureStage):
        if source.mode == f.get("normalize", "none") and source.layer_spec == f.get("layers"):
            return source
        source = source.store  # a selection candidate with another normalisation: its own stage
    return FeatureStage(f, source, manifest, fold.train + fold.val + fold.test, reference_ids=fold.train)


def speaker_normalizer(cfg: dict, manifest: pd.DataFrame, fold: Fold, source):
    """The fold's :class:`~serkit.data.normalize.SpeakerNormalizer` when the config asks for one
    (``features.normalize: speaker``), else None: the feature stage's (``source`` a FeatureStage) or a new one over
    the fold's speakers. Features only: each speaker's statistics use that speaker's own utterances (a test
    speaker's come from its test utterances, never from a label)."""
    if cfg["features"].get("normalize", "none") == "none":
        return None
    return as_feature_stage(cfg, manifest, fold, source).normalizer


def load_loop_encoder(cfg: dict):
    """The encoder that runs inside the model when ``features.source: waveform``; returns (encoder, layers)."""
    from serkit.encoders import load_encoder, parse_layers

    enc = cfg["encoder"]
    encoder = load_encoder(enc["id"], mode=enc.get("mode", "native"), eval_mode=True, revision=enc.get("revision"))
    layers, _ = parse_layers(enc.get("layers", "all"), encoder.num_layers)
    chosen = cfg["features"].get("layers")
    if chosen is not None:
        idx, _ = parse_layers(chosen, len(layers))
        layers = [layers[i] for i in idx]
    return encoder, layers


def model_spec(cfg: dict, labels: LabelMap, source, encoder=None, layers=None, extra: dict | None = None) -> ModelSpec:
    """What the model is told: task, outputs, the layers / width the feature stage hands it, speakers, classes."""
    from serkit.train.feature_stage import FeatureStage

    if isinstance(source, FeatureStage) and source.store is not None and encoder is None:
        num_layers, hidden, mix = source.num_layers, source.hidden_size, source.model_layers
    elif source is not None and not isinstance(source, FeatureStage):
        num_layers, hidden, mix = len(source.layers), int(source.hidden_size), None
    else:
        num_layers, hidden = len(layers or []), int(getattr(encoder, "hidden_size", 0))
        mix = source.model_layers if isinstance(source, FeatureStage) else None
    return ModelSpec(task=cfg["task"], num_outputs=labels.num_outputs, num_layers=num_layers, hidden_size=hidden,
                     num_speakers=len(labels.speakers), class_names=list(labels.classes),
                     extra={"encoder": cfg["encoder"], **(extra or {})}, layers=mix)


def inference_device(train_cfg: dict | None = None) -> torch.device:
    """Where no-grad passes outside Lightning run (test scoring, frame extraction): the GPU when training would use
    one (``train.accelerator`` auto / gpu / cuda and CUDA available), else the CPU."""
    acc = str((train_cfg or {}).get("accelerator", "auto"))
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def predict_outputs(module: SERModule, loader: DataLoader, device: torch.device | str | None = None
                    ) -> dict[str, np.ndarray]:
    """Run the model over ``loader``; concatenate every per-utterance output (batch-first tensors).

    ``device``: where to run (default :func:`inference_device`); Lightning hands a trained module back on the CPU,
    so without this a GPU run would score its test set on the CPU. The module goes back where it was afterwards.
    """
    module.eval()
    home = next(module.parameters()).device
    device = torch.device(device) if device is not None else inference_device()
    module.to(device)
    outs: dict[str, list] = {}
    try:
        for batch in loader:
            batch = to_device(batch, device)
            out = module.model(batch)
            n = len(batch["emotion"])
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n and v.ndim <= 2 and k != "frame_mask":
                    outs.setdefault(k, []).append(v.float().cpu().numpy())
    finally:
        module.to(home)
    return {k: np.concatenate(v) for k, v in outs.items()}


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
        if store is None and opts.get("normalize", "none") != "none" and cfg["features"]["source"] == "waveform":
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
    return _fold_result(ctx, stages, records)


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
    _check_features(cfg, stages, records)
    return ctx, stages, records


def final_module(ctx: StageContext, stages: list):
    """The trained module of the last training stage (rebuilt from its saved state when it was reused)."""
    last = [s for s in stages if isinstance(s, TrainStage)][-1]
    r = ctx.results[last.name]
    if r.module is not None:
        return r.module, last
    spec = model_spec(ctx.cfg, ctx.labels, next(iter(ctx.features.values())))
    model = last.model(ctx, spec) if last.model is not None else ctx.recipe.build_model(ctx.cfg, spec)
    model.load_state_dict(r.state(), strict=False)
    module = SERModule(model, None, ctx.labels, ctx.cfg["train"])
    module.spec = spec
    return module, last


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
    return {"fold": stable_hash([sorted(map(str, fold.train)), sorted(map(str, fold.val)), sorted(map(str, fold.test))]),
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
    t0, n0 = time.time(), _normalised(ctx)
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
              "normalisation": {"mode": cfg["features"].get("normalize", "none")},
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
        # Refit on train + validation for the epoch count that validation chose (as GridSearchCV's refit);
        # the test part is still never looked at before scoring.
        import copy

        refit_epochs = (marker["best_epoch"] or 0) + 1
        rstage = copy.copy(stage)
        rstage.train = {**stage.train, "epochs": refit_epochs, "min_epochs": refit_epochs,
                        "patience": refit_epochs + 1}
        fold = ctx.fold
        whole = Fold(fold.index, fold.protocol, fold.speaker_independent, fold.train + fold.val, fold.val, fold.test,
                     fold.test_speakers, fold.val_speakers)
        module, _, _, (_, _, test_ds), eval_kw = train_module(
            cfg, ctx.manifest, whole, as_feature_stage(cfg, ctx.manifest, whole, features), work_dir / "refit",
            select=False, stage=rstage, ctx=ctx)
        marker["refit_epochs"] = refit_epochs
    outputs = None
    if stage.score:
        device = inference_device(cfg["train"])
        outputs = {part: predict_outputs(module, DataLoader(ds, **eval_kw), device)
                   for part, ds in (("val", val_ds), ("test", test_ds)) if len(ds)
                   and not (part == "val" and val_before_refit is not None)}
        if val_before_refit is not None:
            outputs["val"] = val_before_refit
    marker["seconds"] = round(time.time() - t0, 1)
    marker["features"] = _feature_record(ctx, n0)
    if selection is not None and ctx.cfg["features"].get("normalize") == "auto":
        for v in marker["features"].values():  # the chosen candidate's own feature stage applied it
            v["normalize"] = cfg["features"].get("normalize", "none")
    result = StageResult(stage.name, stage_dir, key, marker, outputs, module=module)
    if not in_fold_dir:
        from safetensors.torch import save_file

        files = ["state.safetensors"]
        with atomic_path(stage_dir / "state.safetensors") as tmp:  # whole or absent; the umask's mode, not 0600
            save_file(trained_state(module.model), str(tmp))
        if outputs is not None:
            save_outputs(stage_dir / "outputs.npz", outputs)
            files.append("outputs.npz")
        marker["files"] = files
        atomic_write_json(stage_dir / "stage.json", marker)
        import shutil

        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the saved state replaces them
    return result


def _run_step(ctx: StageContext, step: Step, upstream: list) -> StageResult:
    key = stable_hash([_stage_base(ctx), step.name, step.key, upstream[1:]])
    stage_dir = ctx.root / f"{step.name}-{key}"
    marker = read_marker(stage_dir, key)
    if marker is not None:
        arrays = dict(np.load(stage_dir / "arrays.npz")) if (stage_dir / "arrays.npz").exists() else None
        outputs = load_outputs(stage_dir / "outputs.npz") if (stage_dir / "outputs.npz").exists() else None
        return StageResult(step.name, stage_dir, key, marker, outputs, arrays)
    t0, n0 = time.time(), _normalised(ctx)
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
              "features": _feature_record(ctx, n0)}
    atomic_write_json(stage_dir / "stage.json", marker)
    return StageResult(step.name, stage_dir, key, marker, outputs, arrays)


def _normalised(ctx: StageContext) -> dict:
    return {v: f.normalised for v, f in ctx.features.items()}


def _feature_record(ctx: StageContext, before: dict) -> dict:
    """Per view, what the feature stage applied since ``before`` (normalised-item counts)."""
    out = {}
    for v, f in ctx.features.items():
        n = f.normalised - before[v]
        out[v] = {**f.record(), "normalised_items": n, "normalize": f.mode if n > 0 else "none"}
    return out


def task_metrics(task: str, labels: LabelMap, outputs: dict, enc: dict) -> dict:
    """Metrics of ``outputs`` (``probs`` or ``logits``; ``prediction``) against encoded labels ``enc``."""
    if task == "classification":
        return classification_metrics(enc["emotion"], class_probabilities(outputs).argmax(-1), labels.classes)
    return regression_metrics(outputs["prediction"], enc["targets"], labels.targets)


def class_probabilities(outputs: dict) -> np.ndarray:
    """``outputs["probs"]``, or the softmax of ``outputs["logits"]``."""
    if "probs" in outputs:
        return np.asarray(outputs["probs"])
    return torch.softmax(torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32)), -1).numpy()


def _fold_result(ctx: StageContext, stages: list, records: dict) -> dict:
    cfg, fold, labels, manifest = ctx.cfg, ctx.fold, ctx.labels, ctx.manifest
    scored = [s.name for s in stages if ctx.results[s.name].outputs is not None
              and "test" in ctx.results[s.name].outputs]
    if not scored:
        raise ConfigError(f"recipe {cfg['recipe']!r}: no stage produced test outputs to score")
    final = ctx.results[scored[-1]]
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
        res["absent_from_test"] = [c for i, c in enumerate(labels.classes) if i in seen and c not in res["ua_classes"]]
        res["unseen_in_training"] = [c for i, c in enumerate(labels.classes) if c in res["ua_classes"] and i not in seen]
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
    res["normalisation"] = final.marker.get("normalisation", {"mode": cfg["features"].get("normalize", "none")})
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
    res["features"] = _check_features(cfg, stages, records)
    atomic_write_text(ctx.fold_dir / "predictions.csv", pred_table.to_csv(index=False))
    if "embedding" in test:
        embeddings = np.asarray(test["embedding"], dtype=np.float32)
        atomic_write(ctx.fold_dir / "test_embeddings.npy", lambda fh: np.save(fh, embeddings))
    return res  # fit_fold writes result.json (the fold's resume marker) with its time


def _check_features(cfg: dict, stages: list, records: dict) -> dict:
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
        asked = cfg["features"].get("normalize", "none")
        if asked not in ("none", "auto") and v["normalize"] != asked:  # auto: the chosen candidate's (selection)
            raise ConfigError(
                f"recipe {cfg['recipe']!r}: features.normalize: {asked!r} was asked for, but the feature stage of view "
                f"{view!r} served normalised features to these stages only: "
                f"{[n for n, m in v['stages'].items() if m == asked]} (of {list(v['stages'])}); the recipe builds "
                f"datasets or models past the feature stage")
    return views
