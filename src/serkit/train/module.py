"""The LightningModule: a downstream model + an objective; validation metrics over the whole validation set."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from serkit.config_defaults import DEFAULTS
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.losses.objective import Objective
from serkit.metrics import classification_metrics, regression_metrics


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def step_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of the global RNGs for training batch ``batch`` of ``epoch``: a function of (seed, epoch, batch)."""
    return (epoch_seed(seed, epoch) * 1_000_033 + batch * 104_729 + 1) % (2**31 - 1)


class SERModule(L.LightningModule):
    """Holds ``model`` (batch dict -> out dict) and ``objective`` (weighted named losses).

    Validation collects predictions of the whole validation set and logs ``val_ua``/``val_wa``/``val_macro_f1``
    (classification) or ``val_ccc_mean`` and per-attribute CCC (regression) once per epoch; the lists are reset
    at every epoch start. Every random draw of training is a function of (seed, epoch, batch): data order and
    augmentation come from samplers and datasets seeded by (seed, epoch), and the global torch / numpy / python
    RNGs (dropout, in-loop cropping and mixing, loss subsampling) are reseeded from :func:`step_seed` before each
    training batch. A run resumed from the last epoch's checkpoint (weights, optimiser, scheduler, early stopping
    and checkpoint state) therefore repeats exactly what the uninterrupted run would have done, whatever Lightning
    itself drew while restoring.
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, labels: LabelMap, train_cfg: dict,
                 batch_hook=None):
        super().__init__()
        self.model = model
        self.objective = objective
        self.labels = labels
        self.cfg = {**DEFAULTS["train"], **train_cfg}  # keys the caller leaves out at their one default
        self.batch_hook = batch_hook  # e.g. waveform mixup: (batch, module) -> batch
        self._val: list[tuple[np.ndarray, np.ndarray]] = []
        self.history: list[dict] = []

    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    # -- training ---------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        dl = self.trainer.train_dataloader
        ds = getattr(dl, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)
        sampler = getattr(dl, "batch_sampler", None)
        for s in (sampler, getattr(dl, "sampler", None), getattr(sampler, "sampler", None)):
            if hasattr(s, "set_epoch"):
                s.set_epoch(self.current_epoch)
        if hasattr(self.model, "set_epoch"):  # e.g. an encoder in the loop frozen for the head's warm-up epochs
            self.model.set_epoch(self.current_epoch)

    def on_train_start(self) -> None:
        """Fitted input operations (``model.fit_input`` where ``model.fits_input``) and the closed-form solver
        see the whole training set in index order: the same fit in a run and in its resumption."""
        fits_input = getattr(self.model, "fits_input", False)
        ridge = self.cfg["solver"] == "ridge"
        if not (ridge or fits_input):
            return
        from serkit.data.features import collate

        ds = self.trainer.train_dataloader.dataset
        if fits_input and getattr(self.model, "fits_input_in_chunks", False) and not ridge:
            step = 64  # utterances per chunk: the training set's frames are never in memory at once
            self.model.fit_input(collate([ds[i] for i in range(j, min(j + step, len(ds)))])
                                 for j in range(0, len(ds), step))
            return
        batch = collate([ds[i] for i in range(len(ds))])
        if fits_input:
            self.model.fit_input(batch)
        if ridge:  # closed form on the whole training set, then no steps
            self.model.fit_ridge(batch["pooled"], batch["targets"], float(self.cfg["ridge_alpha"]))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        seed = step_seed(int(self.cfg["seed"]), self.current_epoch, batch_idx)
        torch.manual_seed(seed)  # also every CUDA device
        np.random.seed(seed)
        random.seed(seed)

    def training_step(self, batch: dict, batch_idx: int):
        if self.cfg["solver"] == "ridge":
            return None  # the closed-form fit (on_train_start) is the whole training: no step
        if self.batch_hook is not None:
            batch = self.batch_hook(batch, self)
        out = self.model(batch)
        loss, parts = self.objective(out, batch)
        bs = len(batch["emotion"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=bs, prog_bar=True)
        for k, v in parts.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # -- validation -------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int):
        out = self.model(batch)
        loss, _ = self.objective(out, batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["emotion"]))
        if self.labels.task == "classification":
            self._val.append((out["logits"].argmax(-1).cpu().numpy(), batch["emotion"].cpu().numpy()))
        else:
            self._val.append((out["prediction"].float().cpu().numpy(), batch["targets"].cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        parts = self._val
        if self.trainer.world_size > 1:  # DDP: every rank scored its shard; metrics over all of them, on every rank
            import torch.distributed as dist

            gathered = [None] * self.trainer.world_size
            dist.all_gather_object(gathered, parts)
            parts = [x for rank_parts in gathered for x in rank_parts]
        if not parts:
            return
        pred = np.concatenate([p for p, _ in parts])
        true = np.concatenate([t for _, t in parts])
        if self.labels.task == "classification":
            m = classification_metrics(true, pred, self.labels.classes)
            keys = ("ua", "wa", "macro_f1")
        else:
            m = regression_metrics(pred, true, self.labels.targets)
            keys = ("ccc_mean",) + tuple(f"ccc_{a}" for a in self.labels.targets)
        for k in keys:
            self.log(f"val_{k}", float(m[k]), prog_bar=k in ("ua", "ccc_mean"))
        self._val = []

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning refuses to clip the gradients of a fused optimizer (it could not unscale fp16 gradients before
        the step); without a gradient scaler (fp32, bf16) there is nothing to unscale, so they are clipped here by
        norm, as Lightning does for other optimizers."""
        fused = bool(optimizer.defaults.get("fused"))
        if fused and gradient_clip_val and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if gradient_clip_algorithm not in (None, "norm"):
                raise ConfigError(f"train.fused_optimizer: gradient clipping by {gradient_clip_algorithm!r} is not "
                                  f"supported; clip by norm")
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.cfg
        lr, wd = float(cfg["lr"]), float(cfg["weight_decay"])
        if hasattr(self.model, "param_groups"):  # e.g. layer-wise learning-rate decay of a fine-tuned encoder
            groups = self.model.param_groups(lr, wd)
        else:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr, "weight_decay": wd}]
        for term in self.objective.terms.values():
            params = [p for p in term.parameters() if p.requires_grad]
            if params:  # e.g. center-loss centres, with their own learning rate
                groups.append({"params": params, "lr": float(getattr(term, "lr", lr)), "weight_decay": 0.0})
        name = cfg["optimizer"]
        # train.fused_optimizer: PyTorch's fused update (one kernel over every parameter instead of ~10 passes per
        # tensor; the same arithmetic up to float rounding); on this CPU Adam's step over a Whisper block took 6x less
        kw = {"fused": True} if cfg["fused_optimizer"] else {}
        if name == "adamw":
            opt = torch.optim.AdamW(groups, **kw)
        elif name == "adam":
            opt = torch.optim.Adam(groups, **kw)
        else:
            opt = torch.optim.SGD(groups, momentum=0.9, **kw)
        sched = cfg["scheduler"]
        epochs = int(cfg["epochs"])
        if sched == "cosine":
            s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        elif sched == "exponential":  # MLL: x decay per epoch (e.g. 7/8) for the first `decay_epochs`
            decay, until = float(cfg["lr_decay"]), int(cfg["decay_epochs"] or epochs)
            s = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: decay ** min(e, until))
        elif sched == "warmup_linear":  # HCLD: linear warm-up then constant
            w = max(1, int(cfg["warmup_epochs"]))
            s = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / w))
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "epoch"}}
