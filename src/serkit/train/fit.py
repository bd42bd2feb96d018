"""Fit one fold: data loaders, Lightning Trainer with checkpointing / early stopping on validation, resume, test.

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
from serkit.errors import ConfigError
from serkit.io import atomic_write_json, atomic_write_text, load_tensors
from serkit.metrics import classification_metrics, confusion, regression_metrics
from serkit.models.registry import ModelSpec
from serkit.precision import lightning_precision, run_precision
from serkit.protocols import Fold, check_leakage
from serkit.recipes.base import get_recipe
from serkit.train import select as choose
from serkit.train.module import SERModule

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
        max_epochs=int(t["epochs"]), min_epochs=int(t["min_epochs"]), accelerator=t["accelerator"],
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
    if last.exists():
        ckpt = load_tensors(last)
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
    """``source`` is a feature store (cache) or None (waveforms)."""
    from serkit.data.features import FeatureDataset, WaveformDataset

    f = cfg["features"]
    if source is None:
        from serkit.audio import CropPad

        crop = CropPad(**f["crop"]) if isinstance(f["crop"], dict) else None
        mk = lambda ids, train: WaveformDataset(manifest, ids, labels, crop=crop, train=train)
    else:
        normalizer = speaker_normalizer(cfg, manifest, fold, source)
        mk = lambda ids, train: FeatureDataset(
            source, manifest, ids, labels, level=f["level"], preload=f["preload"],
            max_frames=cfg["train"].get("max_frames"), train=train, normalizer=normalizer)
    return mk(fold.train, True), mk(fold.val, False), mk(fold.test, False)


def speaker_normalizer(cfg: dict, manifest: pd.DataFrame, fold: Fold, source):
    """A :class:`~serkit.data.normalize.SpeakerNormalizer` over the fold's speakers when the config asks for one
    (``features.normalize: speaker``), else None. Features only: each speaker's statistics use that speaker's own
    utterances (a test speaker's come from its test utterances, never from a label); a speaker with less than
    ``features.speaker_min_seconds`` / ``speaker_min_utterances`` gets the training fold's global statistics."""
    mode = cfg["features"].get("normalize", "none")
    if mode == "none":
        return None
    if mode != "speaker":
        raise ConfigError(f"features.normalize={mode!r} must be resolved to 'speaker' or 'none' per fold before the "
                          "datasets are built (serkit.train.select)")
    from serkit.data.normalize import SpeakerNormalizer

    f = cfg["features"]
    return SpeakerNormalizer.from_store(
        source, manifest, fold.train + fold.val + fold.test, min_seconds=float(f["speaker_min_seconds"]),
        min_utterances=int(f["speaker_min_utterances"]), reference_ids=fold.train)


def load_loop_encoder(cfg: dict):
    """The encoder that runs inside the model when ``features.source: waveform``; returns (encoder, layers)."""
    from serkit.encoders import load_encoder, parse_layers

    enc = cfg["encoder"]
    encoder = load_encoder(enc["id"], mode=enc.get("mode", "native"), eval_mode=True)
    layers, _ = parse_layers(enc.get("layers", "all"), encoder.num_layers)
    return encoder, layers


def model_spec(cfg: dict, labels: LabelMap, source, encoder=None, layers=None) -> ModelSpec:
    num_layers = len(source.layers) if source is not None else len(layers or [])
    hidden = int(source.hidden_size) if source is not None else int(getattr(encoder, "hidden_size", 0))
    return ModelSpec(task=cfg["task"], num_outputs=labels.num_outputs, num_layers=num_layers, hidden_size=hidden, num_speakers=len(labels.speakers),
                     class_names=list(labels.classes), extra={"encoder": cfg["encoder"]})


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


def train_module(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path, select: bool = True):
    """Train on ``fold.train`` with selection on ``fold.val``; resumes from ``fold_dir/checkpoints/last.ckpt``.

    Returns ``(module with the best validation weights, labels, recipe, (train, val, test) datasets, eval kwargs)``.
    """
    _quiet_lightning()
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["train"]["seed"])
    L.seed_everything(seed + fold.index, workers=True, verbose=False)
    recipe = get_recipe(cfg["recipe"])
    labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"], fold.train)
    make_sets = getattr(recipe, "build_datasets", None) or build_datasets  # a recipe may add items (MLL variants)
    own_sets = make_sets is not build_datasets and not getattr(recipe, "supports_feature_normalisation", False)
    if cfg["features"].get("normalize", "none") != "none" and (own_sets or source is None):
        raise ConfigError(
            f"features.normalize: {cfg['features']['normalize']!r} works on cached features with the default "
            f"datasets; recipe {cfg['recipe']!r} / features.source {cfg['features']['source']!r} does not support it")
    train_ds, val_ds, test_ds = make_sets(cfg, manifest, fold, labels, source)
    encoder = layers = None
    if source is None:
        encoder, layers = load_loop_encoder(cfg)
    spec = model_spec(cfg, labels, source, encoder, layers)
    model = recipe.build_model(cfg, spec)
    if encoder is not None:
        from serkit.models.encoder_model import EncoderDownstream

        model = EncoderDownstream(encoder, model, layers, cfg["encoder"].get("finetune", False))
    objective = recipe.build_objective(cfg, labels, train_ds.enc, spec)
    module = SERModule(model, objective, labels, {**cfg["train"], "seed": seed + fold.index},
                       batch_hook=recipe.batch_hook(cfg, labels))
    t = cfg["train"]
    sampler = recipe.train_sampler(cfg, train_ds, seed + fold.index)
    if isinstance(sampler, tuple) and sampler[0] == "batch_sampler":
        train_dl = DataLoader(train_ds, batch_sampler=sampler[1], collate_fn=collate, **loader_workers(t))
    else:
        train_dl = DataLoader(train_ds, batch_size=t["batch_size"], sampler=sampler, collate_fn=collate,
                              drop_last=len(train_ds) > t["batch_size"], **loader_workers(t))
    eval_kw = dict(batch_size=t["eval_batch_size"], shuffle=False, collate_fn=collate, **loader_workers(t))
    val_dl = DataLoader(val_ds, **eval_kw)
    trainer = make_trainer(cfg, fold_dir)
    fit_resumable(trainer, module, train_dl, val_dl, fold_dir)
    best = fold_dir / "checkpoints" / "best.ckpt"
    if select and best.exists():
        module.load_state_dict(load_tensors(best)["state_dict"])
    module.spec = spec
    return module, labels, recipe, (train_ds, val_ds, test_ds), eval_kw


def fit_fold(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: str | Path) -> dict:
    """Train on ``fold.train``, select on ``fold.val``, score ``fold.test``; resumable; returns the fold result.

    The result carries ``seconds``: the wall time of the call that produced it (a finished fold is read back as it
    was, so a resumed run still reports what each fold cost)."""
    fold_dir = Path(fold_dir)
    result_path = fold_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    t0 = time.time()
    res = _fit_fold(cfg, manifest, fold, source, fold_dir)
    res = {**res, "seconds": round(time.time() - t0, 1), "precision": run_precision(cfg, source)}
    atomic_write_json(result_path, res)
    return res


def _fit_fold(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path) -> dict:
    check_leakage(fold, manifest)
    own = getattr(get_recipe(cfg["recipe"]), "fit_fold", None)
    if own is not None:  # a multi-stage recipe (GMP-ATL) runs its own stages and writes result.json
        if choose.grid(cfg):
            raise ConfigError(f"recipe {cfg['recipe']!r} runs its own stages; features.normalize: auto and "
                              "train.select are not supported there")
        return own(cfg, manifest, fold, source, fold_dir)
    cfg, work_dir, selection, trained = select_on_validation(cfg, manifest, fold, source, fold_dir)
    module, labels, recipe, (train_ds, val_ds, test_ds), eval_kw = trained
    normaliser = {"mode": cfg["features"].get("normalize", "none")}
    if getattr(train_ds, "normalizer", None) is not None:
        normaliser["fallback_speakers"] = list(train_ds.normalizer.fallback_speakers)
    refit_epochs = None
    if cfg["train"].get("refit"):
        # Refit on train + validation for the epoch count that validation chose (as GridSearchCV's refit);
        # the test part is still never looked at before scoring.
        import copy

        refit_epochs = (_best_epoch(work_dir, cfg["train"]["monitor"]) or 0) + 1
        rcfg = copy.deepcopy(cfg)
        rcfg["train"].update(epochs=refit_epochs, min_epochs=refit_epochs, patience=refit_epochs + 1)
        whole = Fold(fold.index, fold.protocol, fold.speaker_independent, fold.train + fold.val, fold.val, fold.test,
                     fold.test_speakers, fold.val_speakers)
        module, labels, recipe, (train_ds, val_ds, test_ds), eval_kw = train_module(
            rcfg, manifest, whole, source, work_dir / "refit", select=False)
    test_dl = DataLoader(test_ds, **eval_kw)
    outputs = predict_outputs(module, test_dl, inference_device(cfg["train"]))
    rows = test_ds.rows
    res = {"fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": fold.val_speakers,
           "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
           "best_epoch": _best_epoch(work_dir, cfg["train"]["monitor"]),
           "best_val": _best_val(work_dir, cfg["train"]["monitor"])}
    pred_table = pd.DataFrame({"id": rows["id"], "speaker": rows["speaker"]})
    if cfg["task"] == "classification":
        y_true = test_ds.enc["emotion"]
        probs = torch.softmax(torch.from_numpy(outputs["logits"]), -1).numpy()
        y_pred = probs.argmax(-1)
        res["metrics"] = classification_metrics(y_true, y_pred, labels.classes)
        # UA and macro-F1 average over the classes the test part holds; say which, and which it lacks
        seen = set(train_ds.enc["emotion"].tolist())
        res["ua_classes"] = [c for i, c in enumerate(labels.classes) if i in set(y_true.tolist())]
        res["absent_from_test"] = [c for i, c in enumerate(labels.classes) if i in seen and c not in res["ua_classes"]]
        res["unseen_in_training"] = [c for i, c in enumerate(labels.classes) if c in res["ua_classes"] and i not in seen]
        res["confusion"] = confusion(y_true, y_pred, len(labels.classes)).tolist()
        pred_table["true"] = [labels.classes[i] for i in y_true]
        pred_table["pred"] = [labels.classes[i] for i in y_pred]
        for i, c in enumerate(labels.classes):
            pred_table[f"p_{c}"] = probs[:, i]
    else:
        y_true = test_ds.enc["targets"]
        res["metrics"] = regression_metrics(outputs["prediction"], y_true, labels.targets)
        for i, a in enumerate(labels.targets):
            pred_table[f"true_{a}"] = y_true[:, i]
            pred_table[f"pred_{a}"] = outputs["prediction"][:, i]
    res["metrics"].update(recipe.extra_test_metrics(outputs, rows, labels, fold))
    res["classes"] = labels.classes
    res["normalisation"] = normaliser
    if selection is not None:
        res["selection"] = selection
    if refit_epochs is not None:
        res["refit_epochs"] = refit_epochs
    res["resumed"] = [{"phase": "search", **r} for r in read_resumes(fold_dir)] + \
        [{"phase": "refit", **r} for r in read_resumes(fold_dir / "refit")]
    atomic_write_text(fold_dir / "predictions.csv", pred_table.to_csv(index=False))
    if "embedding" in outputs:
        np.save(fold_dir / "test_embeddings.npy", outputs["embedding"].astype(np.float32))
    return res  # fit_fold writes result.json (the fold's resume marker) with its time


def select_on_validation(cfg: dict, manifest: pd.DataFrame, fold: Fold, source, fold_dir: Path):
    """Train every candidate of :func:`serkit.train.select.candidates` on ``fold.train``, keep the best on
    ``fold.val`` (never the test part). Returns ``(chosen config, its folder, selection record or None, what
    train_module returned for it)``; with nothing to choose, one training in ``fold_dir`` as before."""
    cands = choose.candidates(cfg)
    if len(cands) == 1:
        return cands[0][1], fold_dir, None, train_module(cands[0][1], manifest, fold, source, fold_dir)
    monitor = cfg["train"]["monitor"]
    scores, kept, kept_i = [], None, None
    for i, (choice, c) in enumerate(cands):
        d = fold_dir / "select" / choose.slug(choice)
        trained = train_module(c, manifest, fold, source, d)
        scores.append(_best_val(d, monitor))
        if choose.best(scores) == i:
            kept, kept_i = trained, i
        log.info("fold %d: candidate %s: best %s %s", fold.index, choose.slug(choice), monitor, scores[-1])
    choice, chosen = cands[kept_i]
    record = {"grid": choose.grid(cfg), "monitor": monitor, "chosen": choice,
              "candidates": [{"choice": ch, "val": v} for (ch, _), v in zip(cands, scores)]}
    return chosen, fold_dir / "select" / choose.slug(choice), record, kept


def _keep_old_metrics(fold_dir: Path) -> None:
    p = fold_dir / "logs" / "metrics.csv"
    if p.exists():
        n = len(list((fold_dir / "logs").glob("metrics-part*.csv")))
        p.rename(fold_dir / "logs" / f"metrics-part{n:02d}.csv")


def read_fold_metrics(fold_dir: Path) -> pd.DataFrame | None:
    """The fold's per-epoch log, stitched across resumes (a later part wins for epochs it re-ran)."""
    logs = Path(fold_dir) / "logs"
    parts = sorted(logs.glob("metrics-part*.csv")) + ([logs / "metrics.csv"] if (logs / "metrics.csv").exists() else [])
    if not parts:
        return None
    out = None
    for p in parts:
        df = pd.read_csv(p)
        if out is not None and "epoch" in df and len(df):
            out = out[out["epoch"] < df["epoch"].min()]
            out = pd.concat([out, df], ignore_index=True)
        else:
            out = df
    return out



def _best_epoch(fold_dir: Path, monitor: str):
    df = read_fold_metrics(fold_dir)
    if df is None or monitor not in df:
        return None
    v = df.dropna(subset=[monitor])
    return int(v.loc[v[monitor].idxmax(), "epoch"]) if len(v) else None


def _best_val(fold_dir: Path, monitor: str):
    df = read_fold_metrics(fold_dir)
    if df is None or monitor not in df:
        return None
    v = df[monitor].dropna()
    return float(v.max()) if len(v) else None
