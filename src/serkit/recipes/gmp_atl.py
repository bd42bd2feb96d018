"""GMP-ATL (Pan et al., Interspeech 2024): three stages per fold, each saved in the fold folder and reused on rerun.

Stage 1 (multi-task, Sec. 3.1, Fig. 1a): encoder -> BiLSTM -> mean pooling -> linear projection (two linear
layers and a ReLU) -> emotion and gender heads; ``L = alpha CE(emotion) + (1 - alpha) CE(gender)``, alpha = 0.9
(``batch["gender"]``: 0 female, 1 male, -1 unknown and ignored). Its test scores are the "stage 1 only" row.

GMPs (Sec. 3.1): frame features of hidden state ``cluster.layer`` (paper: -3) of the stage-1 encoder, of the
TRAINING fold's utterances only, are clustered by k-means at every scale of ``cluster.ks`` (paper: 64, 512, 4096;
:mod:`serkit.clustering`, subsampled to ``max_points_per_centroid`` points per centre); every training frame gets
one pseudo-label per scale. Emotion labels, validation and test utterances are never looked at.

Stage 2 (retraining, Sec. 3.2, Fig. 1b): the encoder from stage 1 with HuBERT-style span masking of its input
frames (:func:`serkit.augment.masking.compute_span_mask`: p = 0.08, span 10) and one pseudo-label head per scale
(:class:`~serkit.models.pseudo_label_head.PseudoLabelHead`, two linear layers + ReLU) on the top layer; CE on the
masked frames (``pseudo_label_ce``). A linear probe on the detached mean-pooled top layer reports validation UA
(it cannot change the encoder); the last epoch is kept, as the paper gives no selection rule for this stage.

Stage 3 (fine-tuning, Sec. 3.3, Fig. 1c): the stage-2 encoder (stage-1 encoder without GMPs) with the stage-1
head structure (BiLSTM -> MAP -> projection) and an AM-softmax classifier (s = 30, m = 0.2; ``loss:
cross_entropy`` for the CE ablation); ``init_head: true`` starts the head from stage 1's (BiLSTM, projection,
and the emotion layer's class directions as AM-softmax weights; a CPU-mode shortcut, the paper trains it anew); the checkpoint with the best validation UA is scored on the test speakers.

Encoder placement per stage (``recipe_options.stageN.finetune``):

* ``features.source: waveform``: the encoder runs on waveforms inside the model; ``finetune`` is ``false``,
  ``true`` (the paper's full fine-tuning) or ``"top:K"``. Masking is the encoder's own (front-end output).
* ``features.source: cache`` (CPU mode): ``finetune: "top:K"`` runs only the top K blocks from the cached hidden
  state at their input (``Encoder.forward_from``), which equals ``top:K`` fine-tuning because the frozen lower
  blocks are deterministic in eval mode; ``false`` uses the cached top layer (frozen encoder). Span masking then
  replaces frames of that cached hidden state (the input of the trainable blocks) instead of the CNN output.
  Later stages start from the cache too, so their K may not be smaller than an earlier stage's.

Stage outputs: ``<stage_root>/stageN-<key>/{state.safetensors, stage.json}`` (trainable parameters, heads included,
+ marker with the
stage's key, timings and test metrics) and ``<stage_root>/gmp-<key>/{pseudo_labels.npz, centroids.npz,
stage.json}``; ``stage_root`` is the fold folder, or ``recipe_options.stage_root/fold<k>`` so that runs sharing a
stage (the ablation rows) compute it once. The key hashes everything the stage depends on (fold split, encoder,
upstream stage keys, the stage's options and schedule); a rerun with a matching marker loads the state instead of
training, a killed stage resumes from its ``checkpoints/last.ckpt``.

``recipe_options`` (defaults in :data:`DEFAULTS`)::

    stages: [1, 2, 3]            # [1]: stage 1 only; [1, 3]: without GMPs
    stage_root: null
    stage1: {finetune: false, hidden: 256, proj_dim: 256, alpha: 0.9, train: {...overrides of train}}
    cluster: {layer: -3, ks: [64, 512, 4096], backend: auto, niter: 25, max_points_per_centroid: 256, seed: 0}
    stage2: {finetune: true, mask_prob: 0.08, span: 10, min_masks: 2, hidden: 256, masked_only: true, train: {}}
    stage3: {finetune: true, loss: am_softmax, s: 30.0, m: 0.2, hidden: 256, proj_dim: 256, init_head: false,
             train: {}}
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from serkit.augment.masking import compute_span_mask
from serkit.data.features import collate, loader_workers, to_device
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.io import atomic_write_json, atomic_write_text
from serkit.losses.base import Objective
from serkit.models.bilstm_head import BiLSTMHead
from serkit.models.heads_am import AMSoftmaxHead
from serkit.models.pseudo_label_head import PseudoLabelHead
from serkit.models.staged_encoder import StagedEncoder
from serkit.recipes.base import Recipe, register_recipe

log = logging.getLogger("serkit")

DEFAULTS: dict = {
    "stages": [1, 2, 3],
    "stage_root": None,
    "stage1": {"finetune": False, "hidden": 256, "proj_dim": 256, "alpha": 0.9, "train": {}},
    "cluster": {"layer": -3, "ks": [64, 512, 4096], "backend": "auto", "niter": 25,
                "max_points_per_centroid": 256, "seed": 0},
    "stage2": {"finetune": True, "mask_prob": 0.08, "span": 10, "min_masks": 2, "hidden": 256,
               "masked_only": True, "train": {}},
    "stage3": {"finetune": True, "loss": "am_softmax", "s": 30.0, "m": 0.2, "hidden": 256, "proj_dim": 256,
               "init_head": False, "train": {}},
}
STAGE3_LOSSES = ("am_softmax", "cross_entropy")


def gmp_options(cfg: dict) -> dict:
    """``recipe_options`` merged over :data:`DEFAULTS` (one level deep), checked."""
    ro = cfg.get("recipe_options") or {}
    unknown = set(ro) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for gmp_atl; known: {sorted(DEFAULTS)}")
    opts = copy.deepcopy(DEFAULTS)
    for k, v in ro.items():
        if isinstance(opts[k], dict):
            extra = set(v or {}) - set(opts[k])
            if extra:
                raise ConfigError(f"recipe_options.{k}: unknown key(s) {sorted(extra)}; known: {sorted(opts[k])}")
            opts[k].update(v or {})
        else:
            opts[k] = v
    stages = sorted(int(s) for s in opts["stages"])
    if stages not in ([1], [1, 3], [1, 2, 3]):
        raise ConfigError(f"recipe_options.stages must be [1], [1, 3] or [1, 2, 3], got {opts['stages']}")
    opts["stages"] = stages
    if opts["stage3"]["loss"] not in STAGE3_LOSSES:
        raise ConfigError(f"recipe_options.stage3.loss must be one of {STAGE3_LOSSES}, got {opts['stage3']['loss']!r}")
    return opts


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: ``train`` settings that cannot change a stage's result (data-loading processes, progress bars): left out of the
#: stage keys, so a rerun with another worker count reuses the stages
RESULT_NEUTRAL_TRAIN_KEYS = ("num_workers", "progress")


def _schedule(train: dict) -> dict:
    return {k: v for k, v in train.items() if k not in RESULT_NEUTRAL_TRAIN_KEYS}


# -- model ---------------------------------------------------------------------------------------------------------
class GMPStageModel(nn.Module):
    """One GMP-ATL stage: a :class:`StagedEncoder` and the stage's head (see the module docstring).

    ``stage`` 1: ``{"logits", "gender_logits", "embedding"}``; 2: ``{"pseudo_logits": {k: (B, T, k)},
    "span_mask" (B, T), "pseudo_labels": {k: (B, T)}, "logits" (probe)}``; 3: ``{"logits", "embedding"}`` plus
    ``"cosine"`` with AM-softmax. The batch's ``pseudo`` (B, scales, T_max) long (-1 = none) feeds stage 2.
    """

    def __init__(self, encoder: StagedEncoder, stage: int, num_classes: int, *, hidden: int = 256,
                 proj_dim: int = 256, ks=(64, 512, 4096), mask_prob: float = 0.08, span: int = 10,
                 min_masks: int = 2, loss: str = "am_softmax", s: float = 30.0, m: float = 0.2):
        super().__init__()
        self.encoder, self.stage = encoder, int(stage)
        dim = encoder.encoder.hidden_size
        if self.stage == 2:
            self.ks = [int(k) for k in ks]
            self.pseudo_head = PseudoLabelHead(dim, self.ks, hidden=hidden)
            self.probe = nn.Linear(dim, num_classes)
            self.mask_prob, self.span, self.min_masks = float(mask_prob), int(span), int(min_masks)
        else:
            self.head = BiLSTMHead(dim, hidden=hidden, num_classes=num_classes,
                                   num_genders=2 if self.stage == 1 else 0, proj_dim=proj_dim)
            self.am = AMSoftmaxHead(proj_dim, num_classes, s=s, m=m) if (stage == 3 and loss == "am_softmax") \
                else None

    def forward(self, batch: dict) -> dict:
        mask = None
        if self.stage == 2 and self.training:
            fm = self.encoder.frame_mask(batch)
            mask = compute_span_mask(tuple(fm.shape), self.mask_prob, self.span, self.min_masks, fm, device=fm.device)
        enc = self.encoder(batch, mask)
        x, fm = enc.hidden_states[-1].float(), enc.frame_mask
        if self.stage != 2:
            out = self.head(x, fm)
            if self.am is not None:
                out.update(self.am(out["embedding"]))
            out["frame_mask"] = fm
            return out
        b, t = fm.shape
        out = {"pseudo_logits": self.pseudo_head(x),
               "span_mask": mask if mask is not None else torch.zeros(b, t, dtype=torch.bool, device=x.device)}
        w = fm[..., None].to(x.dtype)
        out["logits"] = self.probe(((x * w).sum(1) / w.sum(1).clamp(min=1)).detach())
        lab = batch.get("pseudo")
        if lab is None:
            lab = torch.full((b, len(self.ks), t), -1, dtype=torch.long, device=x.device)
        else:
            lab = lab.to(x.device).long()[:, :, :t]
            if lab.shape[-1] < t:
                lab = nn.functional.pad(lab, (0, t - lab.shape[-1]), value=-1)
        out["pseudo_labels"] = {k: lab[:, i] for i, k in enumerate(self.ks)}
        return out


class _StageObjective(Objective):
    """The stage-2 pseudo-labels travel in ``out`` (cropped to the encoder's frames); the loss reads the batch."""

    def forward(self, out: dict, batch: dict):
        if "pseudo_labels" in out:
            batch = {**batch, "pseudo_labels": out["pseudo_labels"]}
        return super().forward(out, batch)


# -- data ----------------------------------------------------------------------------------------------------------
class StageItems(Dataset):
    """Wraps a Feature/Waveform dataset: optional pseudo-labels per item (``pseudo`` (scales, T_max), -1 padded)
    and, for cached features of training items, a random crop to ``max_frames`` applied to both alike."""

    def __init__(self, base, pseudo: list[np.ndarray] | None = None, max_frames: int | None = None,
                 train: bool = False, seed: int = 0):
        self.base, self.pseudo, self.max_frames, self.train, self.seed = base, pseudo, max_frames, train, seed
        self.enc, self.rows, self.epoch = base.enc, base.rows, 0
        self.t_max = max((p.shape[1] for p in pseudo), default=1) if pseudo is not None else 0

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        lab = None
        if self.pseudo is not None:
            lab = self.pseudo[i]
        x = item.get("features")
        if x is not None and self.train and self.max_frames and x.shape[1] > self.max_frames:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            s = int(rng.integers(0, x.shape[1] - self.max_frames + 1))
            item["features"] = x[:, s:s + self.max_frames]
            if lab is not None:
                lab = lab[:, s:s + self.max_frames]
        if lab is not None:
            buf = np.full((lab.shape[0], self.t_max), -1, dtype=np.int64)
            buf[:, :lab.shape[1]] = lab
            item["pseudo"] = buf
        return item


# -- recipe --------------------------------------------------------------------------------------------------------
@register_recipe("gmp_atl")
class GMPATLRecipe(Recipe):
    """Runs the three stages per fold (``fit_fold``); see the module docstring."""

    default_source = "cache"

    # helpers ---------------------------------------------------------------------------------------------------
    def _encoder(self, cfg: dict):
        from serkit.encoders import load_encoder

        enc = cfg["encoder"]
        cache_key = (enc["id"], enc.get("mode", "native"))
        if getattr(self, "_enc_key", None) != cache_key:
            self._enc_proto = load_encoder(enc["id"], mode=enc.get("mode", "native"), eval_mode=True)
            self._enc_key = cache_key
        return copy.deepcopy(self._enc_proto)

    def _runner(self, cfg: dict, finetune, seed: int | None = None) -> StagedEncoder:
        runner = StagedEncoder(self._encoder(cfg), cfg["features"]["source"], finetune)
        if seed is not None:  # the stage's heads are initialised right after: from this seed only
            import lightning as L  # here, not at the top: registering the recipe (inference) stays Lightning-free

            L.seed_everything(seed, workers=True, verbose=False)
        return runner

    def _datasets(self, cfg, manifest, fold, labels, source, first_layer: int):
        from serkit.data.features import FeatureDataset
        from serkit.train.fit import build_datasets

        if source is None:
            return build_datasets(cfg, manifest, fold, labels, None)
        if first_layer not in source.layers:
            raise ConfigError(f"gmp_atl: hidden state {first_layer} is not in the feature cache {source.root} "
                              f"(layers {source.layers}); cache layers: all")
        li = [source.layers.index(first_layer)]
        f = cfg["features"]
        return tuple(FeatureDataset(source, manifest, ids, labels, level="frames", preload=f["preload"],
                                    layers=li, train=tr)
                     for ids, tr in ((fold.train, True), (fold.val, False), (fold.test, False)))

    @staticmethod
    def _stage_cfg(cfg: dict, overrides: dict, keep_last: bool = False) -> dict:
        c = copy.deepcopy(cfg)
        c["train"] = {**c["train"], **(overrides or {})}
        if keep_last:
            c["train"]["patience"] = int(c["train"]["epochs"]) + 1
        return c

    def _fit(self, cfg_s: dict, model: nn.Module, terms: list[dict], labels: LabelMap, train_ds, val_ds,
             stage_dir: Path, seed: int, keep_last: bool = False):
        import lightning as L

        from serkit.data.samplers import SeededShuffleSampler
        from serkit.io import load_tensors
        from serkit.train.fit import _quiet_lightning, fit_resumable, make_trainer
        from serkit.train.module import SERModule

        _quiet_lightning()
        L.seed_everything(seed, workers=True, verbose=False)
        t = cfg_s["train"]
        module = SERModule(model, _StageObjective(terms), labels, {**t, "seed": seed})
        train_dl = DataLoader(train_ds, batch_size=t["batch_size"], sampler=SeededShuffleSampler(len(train_ds), seed),
                              collate_fn=collate, drop_last=len(train_ds) > t["batch_size"], **loader_workers(t))
        eval_kw = {"batch_size": t["eval_batch_size"], "shuffle": False, "collate_fn": collate, **loader_workers(t)}
        trainer = make_trainer(cfg_s, stage_dir)
        fit_resumable(trainer, module, train_dl, DataLoader(val_ds, **eval_kw), stage_dir)
        pick = stage_dir / "checkpoints" / ("last.ckpt" if keep_last else "best.ckpt")
        if pick.exists():
            module.load_state_dict(load_tensors(pick)["state_dict"])
        return module, eval_kw

    @staticmethod
    def _score(module, test_ds, labels: LabelMap, eval_kw: dict, stage_dir: Path, monitor: str,
               device: torch.device | None = None) -> dict:
        from serkit.metrics import classification_metrics, confusion
        from serkit.train.fit import _best_epoch, _best_val, predict_outputs

        outputs = predict_outputs(module, DataLoader(test_ds, **eval_kw), device)
        y_true = test_ds.enc["emotion"]
        probs = torch.softmax(torch.from_numpy(outputs["logits"]), -1).numpy()
        y_pred = probs.argmax(-1)
        rows = test_ds.rows
        table = pd.DataFrame({"id": rows["id"], "speaker": rows["speaker"],
                              "true": [labels.classes[i] for i in y_true], "pred": [labels.classes[i] for i in y_pred]})
        for i, c in enumerate(labels.classes):
            table[f"p_{c}"] = probs[:, i]
        atomic_write_text(stage_dir / "predictions.csv", table.to_csv(index=False))
        return {"metrics": classification_metrics(y_true, y_pred, labels.classes),
                "confusion": confusion(y_true, y_pred, len(labels.classes)).tolist(),
                "best_epoch": _best_epoch(stage_dir, monitor), "best_val": _best_val(stage_dir, monitor)}

    @staticmethod
    def _marker(stage_dir: Path, key: str) -> dict | None:
        p = stage_dir / "stage.json"
        if p.exists():
            m = json.loads(p.read_text())
            if m.get("key") == key and (not m.get("state") or (stage_dir / m["state"]).exists()):
                return m
        return None

    @staticmethod
    def _finish(stage_dir: Path, key: str, stage, model: nn.Module | None, seconds: float, extra: dict) -> dict:
        from safetensors.torch import save_file

        marker = {"stage": stage, "key": key, "seconds": round(seconds, 1), **extra}
        if model is not None:
            state = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
            save_file(state, str(stage_dir / "state.safetensors"))
            marker["state"] = "state.safetensors"
            marker["parameters"] = int(sum(v.numel() for v in state.values()))
        atomic_write_json(stage_dir / "stage.json", marker)
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the saved state replaces them
        return marker

    @staticmethod
    def _load_encoder_state(model: GMPStageModel, stage_dir: Path | None) -> None:
        """Encoder parameters a previous stage trained (its heads are left out)."""
        if stage_dir is None:
            return
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(stage_dir / "state.safetensors")).items() if k.startswith("encoder.")}
        missing = set(state) - set(dict(model.named_parameters()))
        if missing:
            raise RuntimeError(f"{stage_dir}: saved encoder parameters {sorted(missing)[:3]} do not fit the model")
        model.load_state_dict(state, strict=False)

    @staticmethod
    def _load_head_state(model: GMPStageModel, stage1_dir: Path) -> None:
        """Stage-3 head from stage 1's (BiLSTM, projection; AM-softmax class directions from its emotion layer)."""
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(stage1_dir / "state.safetensors")).items()
                 if k.startswith("head.") and not k.startswith("head.gender")}
        own = model.state_dict()
        bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"gmp_atl: stage3.init_head needs the stage-1 head sizes (hidden, proj_dim); "
                              f"mismatch at {bad[:3]}")
        model.load_state_dict(state, strict=False)
        if model.am is not None and "head.emotion.weight" in state:
            with torch.no_grad():
                model.am.weight.copy_(state["head.emotion.weight"])

    # the fold ----------------------------------------------------------------------------------------------------
    def fit_fold(self, cfg: dict, manifest: pd.DataFrame, fold, source, fold_dir) -> dict:
        if cfg["task"] != "classification":
            raise ConfigError("gmp_atl: classification only (emotion + gender heads, AM-softmax)")
        opts = gmp_options(cfg)
        fold_dir = Path(fold_dir)
        fold_dir.mkdir(parents=True, exist_ok=True)
        root = Path(opts["stage_root"]) / f"fold{fold.index}" if opts["stage_root"] else fold_dir
        seed = int(cfg["train"]["seed"]) + fold.index
        labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"], fold.train)
        enc_cfg = cfg["encoder"]
        src = cfg["features"]["source"]
        base = {"encoder": [enc_cfg["id"], enc_cfg.get("mode", "native"), enc_cfg.get("revision")], "source": src,
                "fold": _hash([sorted(map(str, fold.train)), sorted(map(str, fold.val)), sorted(map(str, fold.test))]),
                "seed": seed, "classes": list(labels.classes), "max_frames": cfg["train"].get("max_frames"),
                "crop": cfg["features"].get("crop")}
        monitor = cfg["train"]["monitor"]
        timings = {}

        # stage 1 -----------------------------------------------------------------------------------------------
        o1 = opts["stage1"]
        cfg1 = self._stage_cfg(cfg, o1["train"])
        key1 = _hash([base, "stage1-v2", {k: v for k, v in o1.items() if k != "train"},
                     _schedule(cfg1["train"])])
        dir1 = root / f"stage1-{key1}"
        m1 = self._marker(dir1, key1)
        runner1 = None
        if m1 is None:
            t0 = time.time()
            runner1 = self._runner(cfg, o1["finetune"], seed)
            model = GMPStageModel(runner1, 1, labels.num_outputs, hidden=o1["hidden"], proj_dim=o1["proj_dim"])
            tr, va, te = self._datasets(cfg1, manifest, fold, labels, source, runner1.first_layer)
            mf = cfg1["train"].get("max_frames")
            terms = [{"name": "cross_entropy", "weight": float(o1["alpha"])},
                     {"name": "gender_ce", "weight": 1.0 - float(o1["alpha"])}]
            module, eval_kw = self._fit(cfg1, model, terms, labels, StageItems(tr, None, mf, True, seed),
                                        StageItems(va), dir1, seed)
            res1 = self._score(module, StageItems(te), labels, eval_kw, dir1, monitor,
                               _inference_device(cfg))
            m1 = self._finish(dir1, key1, 1, model, time.time() - t0,
                              {"result": res1, "first_layer": runner1.first_layer, "encoder_trained": runner1.trains})
            del module, model, tr, va, te
        timings["stage1"] = m1["seconds"]
        encoder_dir = dir1 if m1.get("encoder_trained") else None
        final_dir, final = dir1, m1["result"]
        stage_metrics = {"stage1": m1["result"]["metrics"]}

        # GMPs + stage 2 -----------------------------------------------------------------------------------------
        up_key = key1
        if 2 in opts["stages"]:
            oc, o2 = opts["cluster"], opts["stage2"]
            dirc, pseudo_train, tc = self._gmps(cfg, manifest, fold, labels, source, root, base, key1, m1, dir1, oc)
            timings["clustering"] = tc
            cfg2 = self._stage_cfg(cfg, o2["train"], keep_last=True)
            key2 = _hash([base, "stage2", key1, dirc.name, {k: v for k, v in o2.items() if k != "train"},
                          _schedule(cfg2["train"])])
            dir2 = root / f"stage2-{key2}"
            m2 = self._marker(dir2, key2)
            if m2 is None:
                t0 = time.time()
                runner2 = self._runner(cfg, o2["finetune"], seed)
                self._check_order(runner2, m1.get("first_layer"), "stage 2", "stage 1")
                model = GMPStageModel(runner2, 2, labels.num_outputs, hidden=o2["hidden"], ks=oc["ks"],
                                      mask_prob=o2["mask_prob"], span=o2["span"], min_masks=o2["min_masks"])
                self._load_encoder_state(model, encoder_dir)
                tr, va, _ = self._datasets(cfg2, manifest, fold, labels, source, runner2.first_layer)
                pseudo = [pseudo_train[str(i)] for i in tr.ids]
                terms = [{"name": "pseudo_label_ce", "masked_only": bool(o2["masked_only"])},
                         {"name": "cross_entropy", "key": "probe"}]
                mf = cfg2["train"].get("max_frames")
                module, _ = self._fit(cfg2, model, terms, labels, StageItems(tr, pseudo, mf, True, seed),
                                      StageItems(va), dir2, seed, keep_last=True)
                m2 = self._finish(dir2, key2, 2, model, time.time() - t0,
                                  {"first_layer": runner2.first_layer, "clusters": dirc.name,
                                   "probe_val_ua_last": _last_val(dir2, monitor)})
                del module, model, tr, va
            timings["stage2"] = m2["seconds"]
            encoder_dir, up_key = dir2, key2
            first_up = m2["first_layer"]
        else:
            first_up = m1.get("first_layer")

        # stage 3 -----------------------------------------------------------------------------------------------
        if 3 in opts["stages"]:
            o3 = opts["stage3"]
            cfg3 = self._stage_cfg(cfg, o3["train"])
            key3 = _hash([base, "stage3", up_key, {k: v for k, v in o3.items() if k != "train"},
                          _schedule(cfg3["train"])])
            dir3 = root / f"stage3-{key3}"
            m3 = self._marker(dir3, key3)
            if m3 is None:
                t0 = time.time()
                runner3 = self._runner(cfg, o3["finetune"], seed)
                self._check_order(runner3, first_up, "stage 3", "the stage before")
                model = GMPStageModel(runner3, 3, labels.num_outputs, hidden=o3["hidden"], proj_dim=o3["proj_dim"],
                                      loss=o3["loss"], s=o3["s"], m=o3["m"])
                self._load_encoder_state(model, encoder_dir)
                if o3["init_head"]:
                    self._load_head_state(model, dir1)
                tr, va, te = self._datasets(cfg3, manifest, fold, labels, source, runner3.first_layer)
                mf = cfg3["train"].get("max_frames")
                term = {"name": "am_softmax", "s": float(o3["s"]), "m": float(o3["m"])} \
                    if o3["loss"] == "am_softmax" else {"name": "cross_entropy"}
                module, eval_kw = self._fit(cfg3, model, [term], labels, StageItems(tr, None, mf, True, seed),
                                            StageItems(va), dir3, seed)
                res3 = self._score(module, StageItems(te), labels, eval_kw, dir3, monitor,
                                   _inference_device(cfg))
                m3 = self._finish(dir3, key3, 3, model, time.time() - t0,
                                  {"result": res3, "first_layer": runner3.first_layer})
                del module, model, tr, va, te
            timings["stage3"] = m3["seconds"]
            final_dir, final = dir3, m3["result"]
            stage_metrics["stage3"] = m3["result"]["metrics"]

        res = {"fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": fold.val_speakers,
               "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
               "best_epoch": final.get("best_epoch"), "best_val": final.get("best_val"),
               "metrics": final["metrics"], "confusion": final["confusion"], "classes": list(labels.classes),
               "stages": opts["stages"], "stage_dirs": str(root), "final_stage_dir": final_dir.name,
               "stage_metrics": stage_metrics, "stage_seconds": timings}
        if (final_dir / "predictions.csv").exists():
            shutil.copyfile(final_dir / "predictions.csv", fold_dir / "predictions.csv")
        atomic_write_json(fold_dir / "result.json", res)
        return res

    @staticmethod
    def _check_order(runner: StagedEncoder, first_before: int | None, what: str, before: str) -> None:
        """From the cache, a stage's input (cached, pretrained) must lie below every block trained before."""
        if runner.source == "cache" and first_before is not None and runner.first_layer > first_before:
            raise ConfigError(f"gmp_atl: {what} starts from cached hidden state {runner.first_layer} but {before} "
                              f"trained blocks from hidden state {first_before}; give {what} at least as many top "
                              f"blocks (finetune: top:K)")

    # GMPs ------------------------------------------------------------------------------------------------------
    def _gmps(self, cfg, manifest, fold, labels, source, root: Path, base: dict, key1: str, m1: dict, dir1: Path,
              oc: dict):
        """Multi-scale k-means on training frames of hidden state ``oc["layer"]``; ``(dir, {id: (S, T) int}, s)``."""
        from serkit.clustering import assign, fit_kmeans, resolve_backend

        backend = resolve_backend(oc["backend"])

        num_layers = self._encoder_layers(cfg, source)
        layer = int(oc["layer"]) % num_layers
        first1 = m1.get("first_layer")
        # stage 1 changed this layer only when it trained the blocks below it (or ran on waveforms with training)
        from_stage1 = bool(m1.get("encoder_trained")) and (cfg["features"]["source"] == "waveform" or layer > first1)
        keyc = _hash([base, "gmps", oc, key1 if from_stage1 else "pretrained"])
        dirc = root / f"gmp-{keyc}"
        mc = self._marker(dirc, keyc)
        path = dirc / "pseudo_labels.npz"
        if mc is None or not path.exists():
            t0 = time.time()
            dirc.mkdir(parents=True, exist_ok=True)
            ids = [str(i) for i in fold.train]
            if from_stage1 or source is None:
                feats = self._layer_frames(cfg, manifest, fold, labels, source, dir1 if from_stage1 else None,
                                           m1, layer, ids)
            else:
                li = source.layers.index(layer) if layer in source.layers else None
                if li is None:
                    raise ConfigError(f"gmp_atl: cluster layer {layer} is not in the feature cache {source.root}")
                feats = [np.asarray(source.load(i)[li], dtype=np.float32) for i in ids]
            x = np.concatenate(feats)
            cents, labs = {}, {}
            for k in oc["ks"]:
                c = fit_kmeans(x, int(k), backend=backend, niter=int(oc["niter"]), seed=int(oc["seed"]),
                               max_points_per_centroid=oc["max_points_per_centroid"])
                cents[str(k)] = c
                labs[int(k)] = assign(x, c, device="auto" if backend == "torch" else None)
            bounds = np.cumsum([0] + [len(f) for f in feats])
            per = {i: np.stack([labs[int(k)][bounds[j]:bounds[j + 1]] for k in oc["ks"]]).astype(np.int32)
                   for j, i in enumerate(ids)}
            np.savez(dirc / "centroids.npz", **cents)
            np.savez(path, **per)
            counts = {str(k): len(np.unique(labs[int(k)])) for k in oc["ks"]}
            mc = self._finish(dirc, keyc, "gmps", None, time.time() - t0,
                              {"layer": layer, "frames": len(x), "utterances": len(ids), "used_clusters": counts,
                               "backend": backend,
                               "from_stage1": from_stage1})
            del x, feats
        with np.load(path) as z:
            per = {k: z[k] for k in z.files}
        return dirc, per, mc["seconds"]

    def _encoder_layers(self, cfg, source) -> int:
        if source is not None and source.spec.get("num_layers"):
            return int(source.spec["num_layers"])
        return int(self._encoder(cfg).num_layers)

    @torch.no_grad()
    def _layer_frames(self, cfg, manifest, fold, labels, source, dir1: Path | None, m1: dict, layer: int,
                      ids: list[str]) -> list[np.ndarray]:
        """Hidden state ``layer`` of the (stage-1) encoder for every training utterance, (T_i, D) float32 each."""
        o1 = gmp_options(cfg)["stage1"]
        runner = self._runner(cfg, o1["finetune"])
        model = GMPStageModel(runner, 1, labels.num_outputs, hidden=o1["hidden"], proj_dim=o1["proj_dim"])
        self._load_encoder_state(model, dir1)
        device = _inference_device(cfg)
        model.to(device)
        runner.eval()
        first = runner.first_layer
        if layer < first:
            raise ConfigError(f"gmp_atl: cluster layer {layer} lies below the stage-1 input {first}")
        if source is None:
            from serkit.data.features import WaveformDataset

            ds = WaveformDataset(manifest, ids, labels, crop=None, train=False)
        else:
            from serkit.data.features import FeatureDataset

            ds = FeatureDataset(source, manifest, ids, labels, layers=[source.layers.index(first)], preload=False)
        bs = int(cfg["train"]["eval_batch_size"]) if runner.encoder.padding_invariant else 1
        out = []
        for batch in DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=collate,
                                num_workers=loader_workers(cfg["train"])["num_workers"]):
            enc = runner(to_device(batch, device))
            h = enc.hidden_states[layer - runner.first_layer].float().cpu()
            for j, n in enumerate(enc.frame_mask.sum(1).tolist()):
                out.append(h[j, :n].numpy())
        model.to("cpu")
        return out


def _last_val(stage_dir: Path, monitor: str):
    p = stage_dir / "logs" / "metrics.csv"
    if not p.exists():
        return None
    df = pd.read_csv(p)
    v = df[monitor].dropna() if monitor in df else []
    return float(v.iloc[-1]) if len(v) else None


def _inference_device(cfg: dict) -> torch.device:
    from serkit.train.fit import inference_device  # lazily: serkit.train.fit imports the recipe registry

    return inference_device(cfg["train"])
