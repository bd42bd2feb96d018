"""The Lightning side of a training stage: trainer set-up (precision, loggers, checkpoints in the run folder) and
resumable fitting (a killed run continues from its last checkpoint to the same result)."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from serkit.errors import ConfigError, SerkitError
from serkit.io import atomic_write_json, load_tensors
from serkit.precision import lightning_precision
from serkit.train.logs import _best_epoch, _best_val, _keep_old_metrics, read_fold_metrics  # noqa: F401

log = logging.getLogger("serkit")


#: ``train.logger`` -> the package Lightning's logger needs (None: always there)
LOGGER_PACKAGES = {"csv": None, "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


#: Written into a run folder when its ``trainer.fit`` returned: a rerun then loads the final weights instead of
#: resuming (Lightning would run another epoch past an early stop).
FINISHED_FILE = "finished.json"
#: Where :func:`fit_resumable` records each resume of a run folder: ``[{"epoch": e, "step": s}, ...]``.
RESUMED_FILE = "resumed.json"


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


def make_loggers(cfg: dict, fold_dir: Path) -> list:
    """Lightning loggers of ``train.logger``: always the CSV logger (``fold_dir/logs/metrics.csv``, which epoch
    selection and the reports read), plus TensorBoard (``fold_dir/tensorboard``) or MLflow (``$MLFLOW_TRACKING_URI``,
    default a file store ``mlruns`` beside the run's folds; experiment = the config's name, run = the fold)."""
    import importlib.util
    import os

    kind = cfg["train"]["logger"]
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
        loggers.append(L.pytorch.loggers.MLFlowLogger(experiment_name=str(cfg["name"]),
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
        devices=t["devices"], num_nodes=int(t["num_nodes"]), strategy=t["strategy"], precision=precision,
        callbacks=[best, last, early, *extra_callbacks],
        logger=logger, deterministic=bool(t["deterministic"]) and not torch.cuda.is_available(),
        gradient_clip_val=t["grad_clip"] or None, enable_progress_bar=bool(t["progress"]),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )


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
