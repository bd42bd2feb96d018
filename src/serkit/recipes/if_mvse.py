"""IF-MVSE: Interactive Fusion of Multi-View Speech Embeddings (Liu et al., Interspeech 2025), as a stage list.

Composition (the blocks live in the library; the runner runs the stages):

* views: utterance embeddings of several encoders, each from its own feature store through the runner's feature
  stage (speaker-normalised when ``features.normalize: speaker``; layer choice per view, ``features.layers``):
  the frame mean of the chosen layer(s), or mean + std statistics (``pooling: stats``, e.g. filterbanks), z-scored
  on the training fold (``standardize``);
* one training stage per score set: one view through the (1024, 512, out) MLP, or a fused pair through dual-feature
  interactive attention + multi-view self-balancing gate + MLP (:class:`serkit.models.fusion.ScoreSetModel`), with
  the config's objective (``ccc``: 1 - CCC per attribute; ``cross_entropy`` for the categorical variant), epoch
  selected on validation;
* a ``combine`` step: ``Y = sum_i w_i S_i`` with weights searched on the validation outputs only (coarse 0..1 step
  0.1, then 0.01 around the best; :mod:`serkit.fusion_weights`), applied once to the test outputs. The fold's
  result is the combination; every score set's test and validation scores are reported as ``stage_metrics`` and
  the best single view (chosen on validation) as ``extras.best_single_view`` (the "method off" row).

Config (``recipe: if_mvse``; ``serkit cv CONFIG --out DIR``, ``serkit mvse`` is an alias)::

    encoder:                      # a list: one entry per view (a single mapping is one view)
      - {id: openai/whisper-base, name: whisper_base}
      - {id: fbank-80, name: fbank, pooling: stats, features: {layers: 0}}   # per-view overrides
    features: {normalize: speaker, layers: -1}                              # every view's default
    model: {name: if_mvse, hidden: [1024, 512], dropout: 0.5, fuse_dim: 1024}   # MultiViewScorer defaults
    recipe_options:
      score_sets:                 # default: every view alone + consecutive pairs fused
        - {name: S1, views: [whisper_base]}
        - {name: S2, views: [whisper_base, fbank]}
      pooling: auto               # mean | stats | auto (stats for fbank-*, mean otherwise)
      standardize: true           # z-score each view with training-fold statistics
      class_scores: probs         # classification: fuse softmax probabilities (or logits)
      search: {coarse: 0.1, fine: 0.01, sum_to_one: false}

Choices the paper leaves open (documented, configurable): one model per score set predicting all attributes
(the paper tunes per attribute), the loss being the mean of (1 - CCC) over attributes; free weights in [0, 1]
(the reported ones happen to sum to 1; ``sum_to_one: true`` forces it); views z-scored on the training fold.
"""

from __future__ import annotations

import itertools
import re
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from serkit.config_defaults import DEFAULTS
from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.models.registry import ModelSpec
from serkit.recipes.base import Recipe, register_recipe

# a view's encoder settings default to the config's encoder section (its id is the view's own)
VIEW_DEFAULTS = {k: v for k, v in DEFAULTS["encoder"].items() if k != "id"}
VIEW_KEYS = {"name", "pooling", "features"}  # view settings beside the encoder's own keys
MODEL_KEYS = {"hidden", "dropout", "input_proj", "num_paths", "fuse_dim", "gate_dim", "bias", "project_all"}


@dataclass
class SearchOptions:
    coarse: float = 0.1
    fine: float = 0.01
    sum_to_one: bool = False
    max_evals: int = 200_000


@dataclass
class MVSEOptions:
    """``recipe_options`` of ``if_mvse`` (see the module docstring)."""

    score_sets: list | None = None
    pooling: str = "auto"
    layer: int | None = None  # deprecated: features.layers (every view) or a view's features: {layers: ...}
    standardize: bool = True
    class_scores: str = "probs"
    search: SearchOptions = field(default_factory=SearchOptions)

    def __post_init__(self):
        if self.class_scores not in ("probs", "logits"):
            raise ValueError(f"class_scores must be 'probs' or 'logits', got {self.class_scores!r}")


# --------------------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------------------
def options(cfg: dict) -> MVSEOptions:
    """``recipe_options`` as :class:`MVSEOptions`; unknown keys are errors."""
    return IFMVSERecipe().options(cfg)


def view_specs(cfg: dict) -> list[dict]:
    """The config's views (``encoder`` as a list, or one mapping), each ``{"name", "encoder": {...}, "features":
    {layers, level}, "pooling"}`` with encoder defaults filled in and a unique name."""
    from serkit.data.views import resolve_pooling

    opts = options(cfg)
    encs = cfg["encoder"] if isinstance(cfg["encoder"], list) else [cfg["encoder"]]
    default_layers = cfg["features"].get("layers")
    if opts.layer is not None:
        warnings.warn("recipe_options.layer is deprecated; write features.layers (or a view's features: {layers: "
                      "...})", FutureWarning, stacklevel=2)
        default_layers = opts.layer if default_layers is None else default_layers
    views, seen = [], set()
    for i, enc in enumerate(encs):
        if not isinstance(enc, dict) or "id" not in enc:
            raise ConfigError(f"encoder[{i}]: each view needs a mapping with an 'id', got {enc!r}")
        name = str(enc.get("name") or re.sub(r"[^A-Za-z0-9_]+", "_", str(enc["id"]).split("/")[-1]))
        if name in seen:
            raise ConfigError(f"encoder[{i}]: duplicate view name {name!r}; give each view a 'name'")
        seen.add(name)
        own = dict(enc.get("features") or {})
        if "layer" in enc:  # deprecated per-view spelling
            warnings.warn(f"encoder[{i}].layer is deprecated; write encoder[{i}].features: {{layers: ...}}",
                          FutureWarning, stacklevel=2)
            own.setdefault("layers", enc["layer"])
        bad = sorted(set(own) - {"layers", "normalize"})
        if bad:
            raise ConfigError(f"encoder[{i}].features: unknown key(s) {bad}; a view may set layers, normalize")
        layers = own.get("layers", -1 if default_layers is None else default_layers)
        encoder = {**VIEW_DEFAULTS, **{k: v for k, v in enc.items() if k not in VIEW_KEYS | {"layer"}}}
        views.append({"name": name, "encoder": encoder, "features": {**own, "layers": layers, "level": "pooled"},
                      "pooling": resolve_pooling(str(enc.get("pooling", opts.pooling)), encoder["id"])})
    return views


def score_sets(cfg: dict, view_names: list[str]) -> list[dict]:
    """The configured score sets (each ``{"name", "views"}``); default: every view alone, then each consecutive
    pair of views fused."""
    sets = options(cfg).score_sets
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
    if "hidden" in opts:
        opts["hidden"] = tuple(int(h) for h in opts["hidden"])
    return opts


# --------------------------------------------------------------------------------------------------------------
# views through the feature stage
# --------------------------------------------------------------------------------------------------------------
def view_inputs(ctx) -> tuple[dict, dict, pd.DataFrame]:
    """Every view's input vectors per part, how they were made and the training rows: ``({view: {"train" | "val" |
    "test": (n, width)}}, {view: {"layers", "pooling", "normalize", "width", "mean", "std"}}, training rows)``. The
    view's pooled statistics come from its feature stage (normalised, chosen layers), are pooled to a vector and
    z-scored with the training rows' statistics (``mean`` / ``std`` ``(width,)``; zeros / ones without
    ``standardize``): the recipe of :class:`serkit.models.score_sets.ViewInput`. With ``features.speed_perturb`` the
    training rows are the fold's training utterances followed by their speed-perturbed copies, each view's copies
    extracted with that view's encoder (:func:`serkit.train.datasets.with_speed_variants`)."""
    from serkit.data.views import Standardizer

    fold, opts = ctx.fold, options(ctx.cfg)
    parts = {"train": fold.train, "val": fold.val, "test": fold.test}
    mats: dict[str, dict[str, np.ndarray]] = {}
    how: dict[str, dict] = {}
    train_rows = ctx.manifest.set_index("id").loc[[str(i) for i in fold.train]].reset_index()
    train_ids = None
    for v in view_specs(ctx.cfg):
        stage = ctx.feature(v["name"])
        if stage.weighted:
            raise ConfigError(f"view {v['name']!r}: features.layers {stage.layer_spec!r}: IF-MVSE views are fixed "
                              f"vectors; choose an index or a list of layers (concatenated)")
        per = {}
        for p, ids in parts.items():
            ds = stage.dataset(ids, ctx.labels, False, level="pooled")
            if p == "train" and ctx.cfg["features"].get("speed_perturb"):
                ds = _with_copies(ctx, v, stage, ds)
                if train_ids is not None and list(ds.ids) != train_ids:
                    raise ValueError(f"if_mvse: view {v['name']!r} has other training copies than the first view")
                train_ids, train_rows = list(ds.ids), ds.rows.reset_index(drop=True)
            if not len(ds):  # serkit train's validation run has no test part
                per[p] = None
                continue
            x = np.stack([ds[i]["pooled"] for i in range(len(ds))]).astype(np.float32)  # (n, layers, 2*dim)
            if v["pooling"] == "mean":
                x = x[..., : x.shape[-1] // 2]
            per[p] = x.reshape(len(x), -1)
        width = per["train"].shape[1]
        per = {p: np.zeros((0, width), np.float32) if x is None else x for p, x in per.items()}
        mean, std = np.zeros(width, np.float32), np.ones(width, np.float32)
        if opts.standardize:
            z = Standardizer().fit(per["train"])  # training rows only
            per = {p: z.transform(x) for p, x in per.items()}
            mean, std = z.mean.astype(np.float32), z.std.astype(np.float32)
        mats[v["name"]] = per
        how[v["name"]] = {"layers": stage.indices, "pooling": v["pooling"], "normalize": stage.mode, "width": width,
                          "mean": mean, "std": std}
    return mats, how, train_rows


def _with_copies(ctx, view: dict, stage, train):
    """``train`` followed by the view's speed-perturbed copies of the fold's training utterances."""
    from serkit.train.datasets import with_speed_variants

    cfg = {**ctx.cfg, "encoder": view["encoder"]}
    return with_speed_variants(cfg, ctx.manifest, ctx.fold, ctx.labels, stage, train, level="pooled")


def fold_views(ctx, labels: LabelMap) -> tuple:
    """``(train, val, test)`` :class:`~serkit.data.views.ViewDataset` of the fold from :func:`view_inputs`."""
    from serkit.data.views import ViewDataset

    fold = ctx.fold
    mats, _, train_rows = view_inputs(ctx)
    parts = {"val": fold.val, "test": fold.test}
    rows = {p: ctx.manifest.set_index("id").loc[[str(i) for i in ids]].reset_index() for p, ids in parts.items()}
    rows["train"] = train_rows
    out = []
    for p in ("train", "val", "test"):
        ds = ViewDataset({n: m[p] for n, m in mats.items()}, labels.encode(rows[p]))
        ds.rows = rows[p]
        out.append(ds)
    return tuple(out)


# --------------------------------------------------------------------------------------------------------------
# the recipe: one stage per score set, then the combination
# --------------------------------------------------------------------------------------------------------------
@register_recipe("if_mvse")
class IFMVSERecipe(Recipe):
    """Score-set stages and the validation-weighted combination (module docstring)."""

    options_class = MVSEOptions

    def feature_views(self, cfg: dict) -> list[dict]:
        return [{"name": v["name"], "encoder": v["encoder"], "features": v["features"]} for v in view_specs(cfg)]

    def stages(self, cfg: dict) -> list:
        from serkit.train.stages import Step, TrainStage

        if cfg["features"]["source"] != "cache":
            raise ConfigError("if_mvse works on cached utterance embeddings: features.source must be 'cache'")
        views = view_specs(cfg)
        sets = score_sets(cfg, [v["name"] for v in views])
        defaults = model_defaults(cfg)
        out = []
        for s in sets:
            def build(ctx, spec: ModelSpec, s=s) -> nn.Module:
                from serkit.models.fusion import ScoreSetModel

                dims = {v: int(ctx.passed["view_widths"][v]) for v in s["views"]}
                return ScoreSetModel(dims, s, spec.task, spec.num_outputs, **defaults)

            def datasets(ctx, labels, s=s):
                sets_ = fold_views(ctx, labels)
                ctx.passed["view_widths"] = {n: t.shape[1] for n, t in sets_[0].views.items()}
                return tuple(_only(d, s["views"]) for d in sets_)

            safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", s["name"])
            out.append(TrainStage(safe, model=build, datasets=datasets,
                                  key=[s, defaults, asdict(options(cfg)), [v["features"] for v in views]]))
        out.append(Step("combine", run=lambda ctx: combine_step(ctx, [re.sub(r"[^A-Za-z0-9_.+-]+", "_", s["name"])
                                                                      for s in sets]),
                        key=asdict(options(cfg))))
        return out

    def saved_model(self, ctx, stages: list) -> tuple[nn.Module, ModelSpec]:
        """Every score set's selected model, each view's input transform (layer choice, pooling, the training
        rows' z-scores) and the combination weights chosen on validation, as one
        :class:`~serkit.models.score_sets.ScoreSetEnsemble`."""
        from serkit.models.score_sets import ScoreSetEnsemble

        cfg = ctx.cfg
        _, how, _ = view_inputs(ctx)
        sets = score_sets(cfg, list(how))
        names = [s.name for s in stages if s.name != "combine"]
        weights = ctx.results["combine"].marker["weights"]
        desc = {"views": [{"name": n, **{k: h[k] for k in ("layers", "pooling", "normalize", "width")}}
                          for n, h in how.items()],
                "score_sets": sets, "weights": [float(weights.get(n, 0.0)) for n in names],
                "class_scores": options(cfg).class_scores, "model": model_defaults(cfg)}
        spec = ModelSpec(task=cfg["task"], num_outputs=ctx.labels.num_outputs, num_layers=0, hidden_size=0,
                         num_speakers=len(ctx.labels.speakers), class_names=list(ctx.labels.classes),
                         extra={"encoder": cfg["encoder"], "ensemble": desc})
        model = ScoreSetEnsemble(desc, spec.task, spec.num_outputs)
        for view, h in zip(model.views, how.values(), strict=True):
            view.mean.copy_(torch.from_numpy(h["mean"]))
            view.std.copy_(torch.from_numpy(h["std"]))
        for target, name in zip(model.sets, names, strict=True):
            r = ctx.results[name]
            target.load_state_dict(r.module.model.state_dict() if r.module is not None else r.state())
        return model.eval(), spec

    def build_model(self, cfg: dict, spec: ModelSpec) -> nn.Module:
        """The saved predictor (:meth:`saved_model`) from ``spec.extra["ensemble"]``; training stages build their
        score-set models themselves."""
        from serkit.models.score_sets import ScoreSetEnsemble

        if "ensemble" not in spec.extra:
            raise ConfigError("if_mvse: its training stages build one model per score set; build_model rebuilds "
                              "the saved ensemble of a model folder (meta.json spec.extra.ensemble)")
        return ScoreSetEnsemble(spec.extra["ensemble"], spec.task, spec.num_outputs)

    def fold_extras(self, ctx) -> dict:
        comb = ctx.results["combine"].marker
        return {"extras": {k: comb[k] for k in ("weights", "search_val", "best_single_view", "best_score_set")
                           if k in comb}}


def _only(ds, names: list[str]):
    """``ds`` restricted to the views of one score set."""
    from serkit.data.views import ViewDataset

    out = ViewDataset({n: ds.views[n].numpy() for n in names}, ds.enc)
    out.rows = ds.rows
    return out


def combine_step(ctx, names: list[str]) -> dict:
    """Weights from validation outputs and targets only; the test outputs are only ever multiplied by them."""
    import torch

    from serkit.fusion_weights import combine, mean_ccc, search_weights, unweighted_accuracy
    from serkit.train.scoring import task_metrics

    cfg, labels, fold = ctx.cfg, ctx.labels, ctx.fold
    opts = options(cfg)
    cls = cfg["task"] == "classification"
    val_rows = ctx.manifest.set_index("id").loc[[str(i) for i in fold.val]].reset_index()
    val_enc = labels.encode(val_rows)

    def scores(part: str, name: str) -> np.ndarray:
        o = ctx.results[name].outputs[part]
        if not cls:
            return np.asarray(o["prediction"], dtype=np.float32)
        s = np.asarray(o["logits"], dtype=np.float32)
        return torch.softmax(torch.from_numpy(s), -1).numpy() if opts.class_scores == "probs" else s

    val = {n: scores("val", n) for n in names}
    metric, target = (unweighted_accuracy, val_enc["emotion"]) if cls else (mean_ccc, val_enc["targets"])
    s = opts.search
    weights, best = search_weights(val, target, metric, coarse=float(s.coarse), fine=float(s.fine),
                                   sum_to_one=bool(s.sum_to_one), max_evals=int(s.max_evals))
    key = "probs" if cls and opts.class_scores == "probs" else ("logits" if cls else "prediction")
    outputs = {"val": {key: combine(val, weights)}}
    primary = "ua" if cls else "ccc_mean"
    per_val = {n: task_metrics(cfg["task"], labels, ctx.results[n].outputs["val"], val_enc)[primary] for n in names}
    per_test = dict.fromkeys(names)
    if fold.test:  # serkit train's validation run has no test part
        test = {n: scores("test", n) for n in names}  # read only now, after the weights are fixed
        outputs["test"] = {key: combine(test, weights)}
        test_rows = ctx.manifest.set_index("id").loc[[str(i) for i in fold.test]].reset_index()
        test_enc = labels.encode(test_rows)
        per_test = {n: task_metrics(cfg["task"], labels, ctx.results[n].outputs["test"], test_enc)[primary]
                    for n in names}
    views = {re.sub(r"[^A-Za-z0-9_.+-]+", "_", s["name"]): s["views"]
             for s in score_sets(cfg, [v["name"] for v in view_specs(cfg)])}
    singles = [n for n in names if len(views.get(n, [])) == 1]
    best_view = max(singles, key=lambda n: per_val[n]) if singles else None
    best_set = max(names, key=lambda n: per_val[n])
    return {"weights": weights, "search_val": best, "outputs": outputs,
            "best_single_view": None if best_view is None else
            {"name": best_view, "val": per_val[best_view], "test": per_test[best_view]},
            "best_score_set": {"name": best_set, "val": per_val[best_set], "test": per_test[best_set]}}
