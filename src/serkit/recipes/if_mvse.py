"""IF-MVSE: Interactive Fusion of Multi-View Speech Embeddings (Liu et al., Interspeech 2025).

Composition (the blocks live in the library):

* views: utterance embeddings of several encoders, read from each encoder's feature store
  (:mod:`serkit.data.views`; mean-pooled chosen layer, or mean+std statistics for filterbanks);
* score sets: each a separate model - one view through the (1024, 512, out) MLP, or a fused pair through
  dual-feature interactive attention + multi-view self-balancing gate + MLP (:mod:`serkit.models.fusion`);
  trained with the config's objective (``ccc``: 1 - CCC per attribute; ``cross_entropy`` for the categorical
  variant, whose MLP outputs class logits), one Lightning run per score set, epoch selected on validation;
* late fusion: ``Y = sum_i w_i S_i`` with weights searched on the validation outputs only (coarse 0..1 step 0.1,
  then 0.01 around the best; :mod:`serkit.fusion_weights`), applied once to the test outputs.

Config (``recipe: if_mvse``)::

    encoder:                      # a list: one entry per view (a single mapping is one view)
      - {id: openai/whisper-base, name: whisper_base}
      - {id: fbank-80, name: fbank, pooling: stats}   # per-view pooling / layer override recipe_options
    model: {name: if_mvse, hidden: [1024, 512], dropout: 0.5, fuse_dim: 1024}   # MultiViewScorer defaults
    recipe_options:
      score_sets:                 # default: every view alone + consecutive pairs fused
        - {name: S1, views: [whisper_base]}
        - {name: S2, views: [whisper_base, fbank]}
      pooling: auto               # mean | stats | auto (stats for fbank-*, mean otherwise)
      layer: -1                   # stored layer index (-1: final hidden state)
      standardize: true           # z-score each view with training-fold statistics
      class_scores: probs         # classification: fuse softmax probabilities (or logits)
      search: {coarse: 0.1, fine: 0.01, sum_to_one: false}

Run: ``python -m serkit.recipes.if_mvse CONFIG --out DIR`` (or ``serkit mvse CONFIG --out DIR``). ``DIR`` gets
``results.json`` in :func:`serkit.train.cv.run_cv`'s schema (the fold ``metrics`` are those of the weighted
combination) plus ``score_sets`` (per-set test/validation mean ± std), ``combination`` (validation), ``weights``
per fold, and ``report.md`` with those tables. Resumable per (fold, score set): finished score sets keep their
``scores.npz``; a score set killed mid-training restarts from its first epoch.

Choices the paper leaves open (documented, configurable): one model per score set predicting all attributes
(the paper tunes per attribute), the loss being the mean of (1 - CCC) over attributes; free weights in [0, 1]
(the reported ones happen to sum to 1; ``sum_to_one: true`` forces it); views z-scored on the training fold.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.models.registry import ModelSpec
from serkit.recipes.base import Recipe, register_recipe

VIEW_DEFAULTS = {"mode": "native", "layers": "all", "device": "auto", "batch_seconds": 120.0, "precision": "auto"}
OPTION_DEFAULTS = {"score_sets": None, "pooling": "auto", "layer": -1, "standardize": True,
                   "class_scores": "probs",
                   "search": {"coarse": 0.1, "fine": 0.01, "sum_to_one": False, "max_evals": 200_000}}
MODEL_KEYS = {"hidden", "dropout", "input_proj", "num_paths", "fuse_dim", "gate_dim", "bias", "project_all"}


# --------------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------------
def view_specs(cfg: dict) -> list[dict]:
    """The config's views: ``encoder`` as a list (or one mapping), each with a unique ``name``, encoder
    defaults filled in, and resolved ``pooling`` / ``layer``."""
    from serkit.data.views import resolve_pooling

    opts = options(cfg)
    encs = cfg["encoder"] if isinstance(cfg["encoder"], list) else [cfg["encoder"]]
    views, seen = [], set()
    for i, enc in enumerate(encs):
        if not isinstance(enc, dict) or "id" not in enc:
            raise ConfigError(f"encoder[{i}]: each view needs a mapping with an 'id', got {enc!r}")
        v = {**VIEW_DEFAULTS, **enc}
        v["name"] = str(enc.get("name") or re.sub(r"[^A-Za-z0-9_]+", "_", str(enc["id"]).split("/")[-1]))
        if v["name"] in seen:
            raise ConfigError(f"encoder[{i}]: duplicate view name {v['name']!r}; give each view a 'name'")
        seen.add(v["name"])
        v["pooling"] = resolve_pooling(str(enc.get("pooling", opts["pooling"])), v["id"])
        v["layer"] = int(enc.get("layer", opts["layer"]))
        views.append(v)
    return views


def options(cfg: dict) -> dict:
    """``recipe_options`` merged over :data:`OPTION_DEFAULTS`; unknown keys are errors."""
    raw = dict(cfg.get("recipe_options") or {})
    bad = sorted(set(raw) - set(OPTION_DEFAULTS))
    if bad:
        raise ConfigError(f"recipe_options: unknown key(s) {bad} for if_mvse; known: {sorted(OPTION_DEFAULTS)}")
    out = copy.deepcopy(OPTION_DEFAULTS)
    for k, v in raw.items():
        out[k] = {**out[k], **v} if isinstance(out[k], dict) and isinstance(v, dict) else v
    bad = sorted(set(out["search"]) - set(OPTION_DEFAULTS["search"]))
    if bad:
        raise ConfigError(f"recipe_options.search: unknown key(s) {bad}; known: {sorted(OPTION_DEFAULTS['search'])}")
    if out["class_scores"] not in ("probs", "logits"):
        raise ConfigError(f"recipe_options.class_scores must be 'probs' or 'logits', got {out['class_scores']!r}")
    return out


def score_sets(cfg: dict, view_names: list[str]) -> list[dict]:
    """The configured score sets (each ``{"name", "views", ...model overrides}``); default: every view alone,
    then each consecutive pair of views fused."""
    sets = options(cfg)["score_sets"]
    if sets is None:
        sets = [{"name": v, "views": [v]} for v in view_names]
        sets += [{"name": f"{a}+{b}", "views": [a, b]} for a, b in itertools.pairwise(view_names)]
    out, seen = [], set()
    for i, s in enumerate(sets):
        if not isinstance(s, dict) or not s.get("name") or not s.get("views"):
            raise ConfigError(f"recipe_options.score_sets[{i}]: needs 'name' and 'views', got {s!r}")
        unknown = [v for v in s["views"] if v not in view_names]
        if unknown:
            raise ConfigError(f"score set {s['name']!r}: unknown view(s) {unknown}; views: {view_names}")
        if len(s["views"]) not in (1, 2):
            raise ConfigError(f"score set {s['name']!r}: one view or a fused pair, got {s['views']}")
        if s["name"] in seen:
            raise ConfigError(f"recipe_options.score_sets: duplicate name {s['name']!r}")
        seen.add(s["name"])
        out.append(dict(s))
    return out


def model_defaults(cfg: dict) -> dict:
    """The ``model:`` section minus ``name``: :class:`~serkit.models.fusion.MultiViewScorer` defaults."""
    opts = {k: v for k, v in cfg["model"].items() if k != "name"}
    bad = sorted(set(opts) - MODEL_KEYS)
    if bad:
        raise ConfigError(f"model: unknown option(s) {bad} for if_mvse; known: {sorted(MODEL_KEYS)}")
    for k in ("hidden",):
        if k in opts:
            opts[k] = tuple(int(h) for h in opts[k])
    return opts


# --------------------------------------------------------------------------------------------------------------
# the recipe: one score set = one model
# --------------------------------------------------------------------------------------------------------------
class ScoreSetModel(nn.Module):
    """One score set of a :class:`~serkit.models.fusion.MultiViewScorer` behind serkit's batch-dict interface:
    ``batch["views"]`` -> ``{"prediction": (B, attributes)}`` (regression) or ``{"logits": (B, classes)}``."""

    def __init__(self, view_dims: dict, score_set: dict, task: str, num_outputs: int, **defaults):
        super().__init__()
        from serkit.models.fusion import MultiViewScorer

        self.name = score_set["name"]
        self.key = "logits" if task == "classification" else "prediction"
        self.scorer = MultiViewScorer(view_dims, [score_set], num_outputs, **defaults)

    def forward(self, batch: dict) -> dict:
        return {self.key: self.scorer(batch["views"])[self.name]}


@register_recipe("if_mvse")
class IFMVSERecipe(Recipe):
    """Score-set models for IF-MVSE; the cross-validation driver is :func:`run_mvse` (``serkit mvse``)."""

    def build_model(self, cfg: dict, spec: ModelSpec) -> nn.Module:
        ex = spec.extra
        return ScoreSetModel(ex["view_dims"], ex["score_set"], spec.task, spec.num_outputs, **model_defaults(cfg))


# --------------------------------------------------------------------------------------------------------------
# training one score set (Lightning; validation picks the epoch; no checkpoint files)
# --------------------------------------------------------------------------------------------------------------
def _keep_best_callback(monitor: str):
    import lightning as L

    class KeepBest(L.Callback):
        """Keeps the best validation state in memory (cheaper than checkpoint files for small MLPs)."""

        def __init__(self):
            self.best, self.state, self.epoch = -math.inf, None, None

        def on_validation_end(self, trainer, module):
            v = trainer.callback_metrics.get(monitor)
            if v is None:
                return
            v = float(v)
            if math.isfinite(v) and v > self.best:
                self.best, self.epoch = v, int(trainer.current_epoch)
                self.state = {k: t.detach().cpu().clone() for k, t in module.state_dict().items()}

    return KeepBest()


@torch.no_grad()
def _scores(model: nn.Module, ds, task: str, class_scores: str, batch_size: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(ds), batch_size):
        views = {k: v[i:i + batch_size].to(device) for k, v in ds.views.items()}
        out = model({"views": views})
        s = out["logits"] if task == "classification" else out["prediction"]
        if task == "classification" and class_scores == "probs":
            s = torch.softmax(s.float(), -1)
        outs.append(s.float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def train_score_set(cfg: dict, score_set: dict, view_dims: dict, labels: LabelMap, datasets, seed: int,
                    set_dir: Path) -> dict:
    """Train one score set on ``datasets[0]`` with epoch selection on ``datasets[1]`` (validation).

    Returns ``{"val": scores, "test": scores, "best_epoch", "best_val", "epochs_run"}``.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from serkit.data.samplers import SeededShuffleSampler
    from serkit.train.fit import _quiet_lightning
    from serkit.train.module import SERModule

    _quiet_lightning()
    set_dir.mkdir(parents=True, exist_ok=True)
    t = cfg["train"]
    L.seed_everything(seed, workers=True, verbose=False)
    recipe = IFMVSERecipe()
    train_ds, val_ds, test_ds = datasets
    spec = ModelSpec(task=cfg["task"], num_outputs=labels.num_outputs, num_layers=1, hidden_size=0,
                     num_speakers=len(labels.speakers), class_names=list(labels.classes),
                     extra={"encoder": cfg["encoder"], "view_dims": view_dims, "score_set": score_set})
    model = recipe.build_model(cfg, spec)
    objective = recipe.build_objective(cfg, labels, train_ds.enc, spec)
    module = SERModule(model, objective, labels, {**t, "seed": seed})
    bs = int(t["batch_size"])
    train_dl = DataLoader(train_ds, batch_size=bs, sampler=SeededShuffleSampler(len(train_ds), seed),
                          num_workers=t["num_workers"], drop_last=len(train_ds) > bs)
    val_dl = DataLoader(val_ds, batch_size=int(t["eval_batch_size"]), shuffle=False, num_workers=t["num_workers"])
    keep = _keep_best_callback(t["monitor"])
    early = L.pytorch.callbacks.EarlyStopping(monitor=t["monitor"], mode="max", patience=int(t["patience"]),
                                              check_finite=False)
    from serkit.precision import lightning_precision

    precision = lightning_precision(t["precision"], t["accelerator"])
    trainer = L.Trainer(
        max_epochs=int(t["epochs"]), min_epochs=int(t["min_epochs"]), accelerator=t["accelerator"], devices=1,
        precision=precision, callbacks=[keep, early], enable_checkpointing=False,
        logger=L.pytorch.loggers.CSVLogger(str(set_dir), name="logs", version=""),
        deterministic=bool(t["deterministic"]) and not torch.cuda.is_available(),
        gradient_clip_val=t["grad_clip"] or None, enable_progress_bar=bool(t["progress"]) and sys.stderr.isatty(),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10)
    trainer.fit(module, train_dl, val_dl)
    if keep.state is not None:
        module.load_state_dict(keep.state)
    module.to("cpu")
    cs = options(cfg)["class_scores"]
    ebs = int(t["eval_batch_size"])
    return {"val": _scores(module.model, val_ds, cfg["task"], cs, ebs),
            "test": _scores(module.model, test_ds, cfg["task"], cs, ebs),
            "best_epoch": keep.epoch, "best_val": None if keep.state is None else keep.best,
            "epochs_run": int(trainer.current_epoch)}


# --------------------------------------------------------------------------------------------------------------
# one fold: every score set, the validation weight search, the test combination
# --------------------------------------------------------------------------------------------------------------
def task_metrics(cfg: dict, labels: LabelMap, scores: np.ndarray, enc: dict) -> dict:
    from serkit.metrics import classification_metrics, regression_metrics

    if cfg["task"] == "classification":
        return classification_metrics(enc["emotion"], scores.argmax(-1), labels.classes)
    return regression_metrics(scores, enc["targets"], labels.targets)


def primary_key(cfg: dict) -> str:
    return "ua" if cfg["task"] == "classification" else "ccc_mean"


def search_and_combine(cfg: dict, val_scores: dict, val_enc: dict, test_scores: dict) -> tuple[dict, float, dict]:
    """Weights from validation scores and targets only; returns ``(weights, val objective, combined)`` where
    ``combined = {"val": ..., "test": ...}``. ``test_scores`` is only ever multiplied by the found weights."""
    from serkit.fusion_weights import combine, mean_ccc, search_weights, unweighted_accuracy

    search = options(cfg)["search"]
    if cfg["task"] == "classification":
        metric, target = unweighted_accuracy, val_enc["emotion"]
    else:
        metric, target = mean_ccc, val_enc["targets"]
    weights, best = search_weights(val_scores, target, metric, coarse=float(search["coarse"]),
                                   fine=float(search["fine"]), sum_to_one=bool(search["sum_to_one"]),
                                   max_evals=int(search["max_evals"]))
    return weights, best, {"val": combine(val_scores, weights), "test": combine(test_scores, weights)}


def fit_fold_mvse(cfg: dict, manifest: pd.DataFrame, fold, views: dict, sets: list[dict], fold_dir: Path,
                  log=print) -> dict:
    """Train every score set of one fold (resumable per set), search weights on validation, score the test part.

    ``views``: ``{name: (len(manifest), dim)}`` embeddings aligned with ``manifest`` rows.
    """
    from serkit.data.views import Standardizer, ViewDataset
    from serkit.io import atomic_write_json, atomic_write_text
    from serkit.metrics import confusion
    from serkit.protocols import check_leakage

    fold_dir = Path(fold_dir)
    result_path = fold_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    check_leakage(fold, manifest)
    fold_dir.mkdir(parents=True, exist_ok=True)
    opts = options(cfg)
    labels = LabelMap.fit(manifest, cfg["task"], cfg["targets"], fold.train)
    row = {str(i): k for k, i in enumerate(manifest["id"].astype(str))}
    idx = {part: np.array([row[str(i)] for i in getattr(fold, part)], dtype=int) for part in ("train", "val", "test")}
    encs = {part: labels.encode(manifest.iloc[ix]) for part, ix in idx.items()}
    fold_views = {}
    for name, mat in views.items():
        parts = {p: mat[ix] for p, ix in idx.items()}
        if opts["standardize"]:
            z = Standardizer().fit(parts["train"])  # training rows only
            parts = {p: z.transform(x) for p, x in parts.items()}
        fold_views[name] = parts
    view_dims = {k: int(v["train"].shape[1]) for k, v in fold_views.items()}
    datasets = tuple(ViewDataset({k: v[p] for k, v in fold_views.items()}, encs[p]) for p in ("train", "val", "test"))
    seed0 = int(cfg["train"]["seed"]) + fold.index
    per_set, val_scores, test_scores = {}, {}, {}
    for s in sets:
        name = s["name"]
        set_dir = fold_dir / re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)
        npz, meta_path = set_dir / "scores.npz", set_dir / "meta.json"
        if npz.exists() and meta_path.exists():
            with np.load(npz) as z:
                out = {"val": z["val"], "test": z["test"], **json.loads(meta_path.read_text())}
        else:
            t0 = time.time()
            seed = seed0 + zlib.crc32(name.encode()) % 10_000
            sub = {v: view_dims[v] for v in s["views"]}
            out = train_score_set(cfg, s, sub, labels, datasets, seed, set_dir)
            out["seconds"] = round(time.time() - t0, 1)
            set_dir.mkdir(parents=True, exist_ok=True)
            np.savez(npz, val=out["val"], test=out["test"])
            atomic_write_json(meta_path, {k: out[k] for k in ("best_epoch", "best_val", "epochs_run", "seconds")})
        val_scores[name], test_scores[name] = out["val"], out["test"]
        per_set[name] = {"views": list(s["views"]), "best_epoch": out["best_epoch"], "best_val": out["best_val"],
                         "epochs_run": out.get("epochs_run"), "seconds": out.get("seconds"),
                         "val": task_metrics(cfg, labels, out["val"], encs["val"]),
                         "test": task_metrics(cfg, labels, out["test"], encs["test"])}
        key = primary_key(cfg)
        log(f"  fold {fold.index} {name} ({'+'.join(s['views'])}): val {key} {per_set[name]['val'][key]:.4f}, "
            f"test {per_set[name]['test'][key]:.4f} (best epoch {out['best_epoch']}, {out.get('seconds', 0)} s)")

    weights, search_best, comb = search_and_combine(cfg, val_scores, encs["val"], test_scores)
    key = primary_key(cfg)
    val_m = task_metrics(cfg, labels, comb["val"], encs["val"])
    test_m = task_metrics(cfg, labels, comb["test"], encs["test"])
    singles = [n for n, r in per_set.items() if len(r["views"]) == 1]
    best_view = max(singles, key=lambda n: per_set[n]["val"][key]) if singles else None
    best_set = max(per_set, key=lambda n: per_set[n]["val"][key])
    res = {"fold": fold.index, "test_speakers": fold.test_speakers, "val_speakers": fold.val_speakers,
           "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
           "metrics": test_m, "val_metrics": val_m, "weights": weights, "search_val": search_best,
           "score_sets": per_set, "classes": labels.classes,
           "best_single_view": None if best_view is None else {
               "name": best_view, "val": per_set[best_view]["val"][key], "test": per_set[best_view]["test"][key]},
           "best_score_set": {"name": best_set, "val": per_set[best_set]["val"][key],
                              "test": per_set[best_set]["test"][key]}}
    rows = manifest.iloc[idx["test"]]
    pred = pd.DataFrame({"id": rows["id"].to_numpy(), "speaker": rows["speaker"].to_numpy()})
    if cfg["task"] == "classification":
        y = encs["test"]["emotion"]
        yp = comb["test"].argmax(-1)
        res["confusion"] = confusion(y, yp, len(labels.classes)).tolist()
        pred["true"] = [labels.classes[i] for i in y]
        pred["pred"] = [labels.classes[i] for i in yp]
        for name, sc in test_scores.items():
            pred[f"pred_{name}"] = [labels.classes[i] for i in sc.argmax(-1)]
        for i, c in enumerate(labels.classes):
            pred[f"score_{c}"] = comb["test"][:, i]
    else:
        for i, a in enumerate(labels.targets):
            pred[f"true_{a}"] = encs["test"]["targets"][:, i]
            pred[f"pred_{a}"] = comb["test"][:, i]
            for name, sc in test_scores.items():
                pred[f"pred_{name}_{a}"] = sc[:, i]
    atomic_write_text(fold_dir / "predictions.csv", pred.to_csv(index=False))
    atomic_write_json(result_path, res)
    return res


# --------------------------------------------------------------------------------------------------------------
# cross-validation driver
# --------------------------------------------------------------------------------------------------------------
def load_views(cfg: dict, manifest: pd.DataFrame, out_dir: Path, log=print) -> tuple[pd.DataFrame, dict]:
    """Fill / open every view's feature store; keep utterances present in all of them; ``(manifest, {name:
    (N, dim)})``."""
    from serkit.data.views import view_matrix
    from serkit.train.features import ensure_features, usable_ids

    stores = {}
    for v in view_specs(cfg):
        enc = {k: v[k] for k in v if k not in ("pooling", "layer")}
        stores[v["name"]] = (ensure_features(manifest, cfg, out_dir, encoder=enc, log=log), v)
    n = len(manifest)
    for store, _ in stores.values():
        manifest = usable_ids(store, manifest)
    if len(manifest) < n:
        log(f"{n - len(manifest)} utterance(s) lack features in some view; skipped")
    ids = manifest["id"].astype(str).tolist()
    mats = {name: view_matrix(store, ids, v["layer"], v["pooling"]) for name, (store, v) in stores.items()}
    for name, (_, v) in stores.items():
        log(f"view {name}: {v['id']} layer {v['layer']} {v['pooling']} -> {mats[name].shape[1]}-d")
    return manifest, mats


def run_mvse(config, out_dir: str | Path, overrides: list[str] | None = None, folds_only: list[int] | None = None,
             log=print) -> dict:
    """Cross-validate IF-MVSE over the config's protocol; writes ``results.json`` + ``report.md``; resumable."""
    from serkit.config import dump, load_config
    from serkit.io import atomic_write_json, atomic_write_text
    from serkit.protocols import describe, load_folds, make_folds, save_folds
    from serkit.train.cv import experiment_protocol, has_fold_output, load_experiment_manifest, same_config

    cfg = load_config(config, overrides)
    if cfg["recipe"] != "if_mvse":
        raise ConfigError(f"config recipe is {cfg['recipe']!r}; `serkit mvse` runs recipe: if_mvse")
    if cfg["features"]["source"] != "cache":
        raise ConfigError("if_mvse works on cached utterance embeddings: features.source must be 'cache'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    started = has_fold_output(out)  # a run that failed before any fold wrote a file leaves nothing binding
    if started and cfg_path.exists() and not same_config(cfg_path.read_text(), cfg):
        raise ConfigError(f"{cfg_path} holds a different config and its folds have results; use a new --out "
                          f"folder (or delete it)")
    manifest = load_experiment_manifest(cfg)
    manifest, views = load_views(cfg, manifest, out, log)
    sets = score_sets(cfg, list(views))
    model_defaults(cfg)  # validate before training
    protocol = experiment_protocol(cfg, manifest)
    folds = make_folds(manifest, protocol, seed=int(cfg["train"]["seed"]))
    folds_path = out / "folds.json"
    if started and folds_path.exists() and \
            [f.to_dict() for f in load_folds(folds_path)] != [f.to_dict() for f in folds]:
        raise ConfigError(f"{folds_path} differs from the folds this config builds now; refusing to mix them")
    save_folds(folds, folds_path)
    atomic_write_text(cfg_path, dump(cfg))
    log(f"{cfg['name']}: {len(manifest)} utterances, protocol {protocol}, {len(folds)} fold(s), "
        f"score sets {[(s['name'], s['views']) for s in sets]}")
    log(describe(folds, manifest).to_string(index=False))
    t0 = time.time()
    results = []
    key = primary_key(cfg)
    for fold in folds:
        if folds_only is not None and fold.index not in folds_only:
            continue
        t = time.time()
        res = fit_fold_mvse(cfg, manifest, fold, views, sets, out / f"fold{fold.index}", log)
        log(f"fold {fold.index}: combination test {key} {res['metrics'][key]:.4f}, val {res['val_metrics'][key]:.4f}"
            f" (best single view val {res['best_single_view'] and res['best_single_view']['val']}); weights "
            f"{res['weights']} [{time.time() - t:.0f} s]")
        results.append(res)
    summary = summarise_mvse(cfg, folds, results, protocol, sets)
    summary["wall_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", summary)
    write_mvse_report(out, summary, cfg)
    return summary


def summarise_mvse(cfg: dict, folds, results: list[dict], protocol: dict, sets: list[dict]) -> dict:
    """:func:`serkit.train.cv.summarise` (fold metrics = the combination on test) plus the IF-MVSE tables."""
    from serkit.metrics import mean_std
    from serkit.train.cv import summarise

    summary = summarise(cfg, folds, results, protocol)
    key = primary_key(cfg)
    for f, r in zip(summary["folds"], results, strict=True):
        f.update({k: r[k] for k in ("val_speakers", "val_metrics", "weights", "search_val", "best_single_view",
                                    "best_score_set") if k in r})
        f["score_sets"] = {n: {k: s.get(k) for k in ("views", "best_epoch", "epochs_run", "seconds", "best_val", "val",
                                                    "test")} for n, s in r["score_sets"].items()}
    table = {}
    for s in sets:
        n = s["name"]
        tm, ts = mean_std([r["score_sets"][n]["test"] for r in results])
        vm, vs = mean_std([r["score_sets"][n]["val"] for r in results])
        table[n] = {"views": list(s["views"]), "mean": tm, "std": ts, "val_mean": vm, "val_std": vs}
    summary["score_sets"] = table
    # training time summed over every (fold, score set), also across resumed invocations
    summary["train_seconds"] = round(sum(s.get("seconds") or 0 for r in results for s in r["score_sets"].values()), 1)
    vm, vs = mean_std([r["val_metrics"] for r in results])
    summary["combination"] = {"val_mean": vm, "val_std": vs, "test_mean": summary["mean"],
                              "test_std": summary["std"]}
    summary["weights"] = [{"fold": r["fold"], **r["weights"]} for r in results]
    wm, ws = mean_std([r["weights"] for r in results])
    summary["weights_mean"], summary["weights_std"] = wm, ws
    bsv = [r["best_single_view"] for r in results if r.get("best_single_view")]
    summary["validation_check"] = {
        "metric": key,
        "combination_val": [r["val_metrics"][key] for r in results],
        "best_single_view_val": [b["val"] for b in bsv],
        "best_single_view": [b["name"] for b in bsv],
        "best_single_view_test": [b["test"] for b in bsv],
        "combination_ge_best_single_view_on_val": all(
            r["val_metrics"][key] >= r["best_single_view"]["val"] - 1e-9 for r in results if r.get("best_single_view")),
    }
    return summary


def _keys(summary: dict) -> list[str]:
    if summary["task"] == "classification":
        return ["ua", "wa", "macro_f1"]
    attrs = [k for k in summary["mean"] if k.startswith("ccc_") and k != "ccc_mean"]
    return attrs + ["ccc_mean"]


def format_score_sets(summary: dict, split: str = "test") -> str:
    """Markdown: each score set and the weighted combination, mean ± std over folds, on ``test`` or ``val``."""
    keys = _keys(summary)
    pre = "" if split == "test" else "val_"
    lines = ["| score set | views | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
    for n, s in summary["score_sets"].items():
        lines.append(f"| {n} | {' + '.join(s['views'])} | " + " | ".join(
            f"{s[pre + 'mean'].get(k, float('nan')):.4f} ± {s[pre + 'std'].get(k, float('nan')):.4f}" for k in keys)
            + " |")
    c = summary["combination"]
    m, sd = (c["test_mean"], c["test_std"]) if split == "test" else (c["val_mean"], c["val_std"])
    lines.append("| **weighted combination** | all | " + " | ".join(
        f"**{m.get(k, float('nan')):.4f} ± {sd.get(k, float('nan')):.4f}**" for k in keys) + " |")
    return "\n".join(lines)


def format_weights(summary: dict) -> str:
    names = list(summary["score_sets"])
    lines = ["| fold | " + " | ".join(names) + " | val objective |", "|" + "---|" * (2 + len(names))]
    for f in summary["folds"]:
        lines.append(f"| {f['fold']} | " + " | ".join(f"{f['weights'].get(n, 0):.2f}" for n in names)
                     + f" | {f.get('search_val', float('nan')):.4f} |")
    lines.append("| mean ± std | " + " | ".join(
        f"{summary['weights_mean'].get(n, 0):.2f} ± {summary['weights_std'].get(n, 0):.2f}" for n in names) + " | |")
    return "\n".join(lines)


def format_validation_check(summary: dict) -> str:
    v = summary["validation_check"]
    k = v["metric"]
    head = (f"| fold | best single view (val) | its val {k} | combination val {k} | its test {k} | "
            f"combination test {k} |")
    lines = [head, "|---|---|---|---|---|---|"]
    for f in summary["folds"]:
        b = f.get("best_single_view") or {}
        lines.append(f"| {f['fold']} | {b.get('name')} | {b.get('val', float('nan')):.4f} | "
                     f"{f['val_metrics'][k]:.4f} | {b.get('test', float('nan')):.4f} | {f['metrics'][k]:.4f} |")
    lines.append(f"| mean | | {np.mean(v['best_single_view_val']):.4f} | {np.mean(v['combination_val']):.4f} | "
                 f"{np.mean(v['best_single_view_test']):.4f} | {summary['mean'][k]:.4f} |")
    return "\n".join(lines)


def write_mvse_report(out_dir: Path, summary: dict, cfg: dict) -> Path:
    """The common report (combination = the fold metrics) plus score-set, validation and weight tables."""
    from serkit.io import atomic_write_text
    from serkit.report import write_report

    try:
        path = write_report(out_dir, summary, cfg)
    except (ImportError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # figures are a nicety: never lose the tables to a plotting problem
        from serkit.train.cv import format_table

        path = Path(out_dir) / "report.md"
        atomic_write_text(path, f"# {summary['name']}\n\n(common report failed: {exc!r})\n\n"
                                f"## Test scores per fold (weighted combination)\n\n{format_table(summary)}\n")
    extra = [""]
    if summary.get("train_seconds") is not None:
        extra += [f"- score-set training time summed over folds (resumed runs included): {summary['train_seconds']:.0f} s",
                  ""]
    extra += ["## IF-MVSE: score sets and the weighted combination (test, mean ± std over folds)", "",
              format_score_sets(summary, "test"), "",
              "## Validation (epoch selection and weight search both use it, so these are optimistic)", "",
              format_score_sets(summary, "val"), "",
              "## Combination vs best single view (selected on validation)", "", format_validation_check(summary), "",
              "## Weights found on validation, per fold", "", format_weights(summary), ""]
    atomic_write_text(path, path.read_text() + "\n".join(extra))
    return path


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------
def _main_args(args) -> int:
    folds = [int(x) for x in args.folds.split(",")] if args.folds else None
    summary = run_mvse(args.config, args.out, args.set, folds_only=folds)
    print(format_score_sets(summary, "test"))
    print()
    print(format_validation_check(summary))
    print()
    print(format_weights(summary))
    print(f"results -> {args.out}/results.json, report -> {args.out}/report.md")
    return 0


def _add_arguments(p) -> None:
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    p.set_defaults(func=_main_args)


def add_parsers(sub) -> None:
    """Register ``serkit mvse CONFIG --out DIR``."""
    p = sub.add_parser("mvse", help="IF-MVSE: train every score set per fold, search fusion weights on validation")
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serkit.recipes.if_mvse", description=__doc__.split("\n")[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    # `serkit.recipes` imports every recipe module, so this file is already loaded as serkit.recipes.if_mvse (runpy
    # warns about it); run that canonical module rather than this __main__ copy.
    from serkit.recipes import if_mvse as _canonical  # noqa: PLW0406

    raise SystemExit(_canonical.main())
