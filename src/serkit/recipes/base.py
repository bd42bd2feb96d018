"""The recipe interface: what a method adds to the runner, declared as hooks on :class:`Recipe`.

A recipe subclasses :class:`Recipe`, overrides the hooks it needs, and registers under a name that configs use
(``recipe: mll``). The runner (:mod:`serkit.train.fit`) owns everything else: manifest, folds, feature cache and
the feature stage (layers, speaker normalisation, frame pooling / cropping), Lightning Trainer, loaders, resumption,
scoring, results.json, report and trained model. The hooks:

==========================  ==================================================================================
``options(cfg)``            the recipe's typed, validated ``recipe_options`` (unknown keys are errors)
``stages(cfg)``             the stage list the runner runs per fold (default: one :class:`TrainStage`)
``feature_views(cfg)``      the encoders whose feature stores the runner fills (default: ``cfg["encoder"]``)
``build_model``             the model of a training stage from its :class:`ModelSpec`
``objective_context`` /     values loss constructors may ask for by name / the weighted loss terms
``build_objective``
``train_sampler``           a Sampler (or ``("batch_sampler", obj)``) for training
``batch_hook``              ``(batch, module) -> batch`` on training batches (e.g. waveform mixup)
``build_datasets``          ``(train, val, test)`` from the feature stage (a recipe may add items, e.g. variants)
``extra_test_metrics``      metrics beyond the task's
``fold_extras(ctx)``        extra fields of a fold's result (e.g. fusion weights)
``stage_root(cfg)``         a folder shared by runs whose stages coincide (ablation rows), or None
``saved_model(ctx, stages)`` what ``serkit train`` saves of a finished multi-stage list: ``(model, spec)``, rebuilt
                            for prediction by ``build_model(cfg, spec)``
==========================  ==================================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.losses.objective import Objective, loss_class
from serkit.models.catalog import build_model
from serkit.models.registry import ModelSpec

_RECIPES: dict[str, type] = {}


def register_recipe(name: str):
    def deco(cls):
        cls.name = name
        _RECIPES[name] = cls
        return cls

    return deco


class Recipe:
    name = "baseline"
    #: "cache" (features from the feature cache) or "waveform" (the encoder runs in the training loop)
    default_source = "cache"
    #: typed options class (a dataclass whose fields are the allowed ``recipe_options`` keys), or None (no options)
    options_class: type | None = None
    #: None when ``features.speed_perturb``'s copies reach its training sets (the feature stage's, or its own sets
    #: extended by :func:`serkit.train.datasets.with_speed_variants`); else why they cannot (the runner refuses the
    #: option with this reason)
    no_speed_copies: str | None = None

    def options(self, cfg: dict):
        """``recipe_options`` as :attr:`options_class` (validated, unknown keys named); None without a class."""
        from serkit.options import parse_options

        ro = cfg.get("recipe_options") or {}
        if self.options_class is None:  # a recipe registered outside serkit without an options class
            return dict(ro)
        return parse_options(self.options_class, ro, f"recipe_options ({self.name})")

    def stages(self, cfg: dict) -> list:
        """The stages the runner runs per fold, in order (:mod:`serkit.train.stages`). Default: one training stage
        of :meth:`build_model` with the config's objective, refit on train + validation when ``train.refit``."""
        from serkit.train.stages import TrainStage

        return [TrainStage("main", refit=bool(cfg["train"].get("refit")))]

    def feature_views(self, cfg: dict) -> list[dict]:
        """Encoders whose feature stores the runner fills, each ``{"name", "encoder": {...}, "features": {...}}``
        (``features``: this view's overrides of the feature stage). Default: the config's one encoder, ``main``."""
        return [{"name": "main", "encoder": cfg["encoder"], "features": {}}]

    def stage_root(self, cfg: dict) -> str | None:
        """A folder where stages live across runs (``<root>/fold<k>/<stage>-<key>``), or None (the fold folder)."""
        return None

    def build_datasets(self, cfg: dict, manifest, fold, labels: LabelMap, features) -> tuple:
        """``(train, val, test)`` datasets from the runner's feature stage ``features``
        (:class:`~serkit.train.feature_stage.FeatureStage`). Recipes that add items wrap these."""
        from serkit.train.datasets import build_datasets

        return build_datasets(cfg, manifest, fold, labels, features)

    def fold_extras(self, ctx) -> dict:
        """Extra fields for the fold's result (``ctx``: :class:`~serkit.train.stages.StageContext`)."""
        return {}

    def saved_model(self, ctx, stages: list) -> tuple[torch.nn.Module, ModelSpec]:
        """What ``serkit train`` saves of a finished stage list (``ctx``: its
        :class:`~serkit.train.stages.StageContext`): ``(model, spec)``, where :meth:`build_model` ``(cfg, spec)``
        rebuilds ``model`` for prediction (``spec.extra`` beside ``encoder`` is saved in ``meta.json``, so it must be
        JSON). Default: the final training stage's model (the last one, or the one ``train.final_stage: best_val``
        kept); a list that ends in a step must say how it is replayed."""
        from serkit.train.stages import Step, TrainStage, final_module

        if isinstance(stages[-1], Step):
            raise ConfigError(f"recipe {self.name!r} ends in the step {stages[-1].name!r}, which a single saved model "
                              f"cannot replay; use serkit cv")
        module, stage = final_module(ctx, stages)
        last = [s for s in stages if isinstance(s, TrainStage)][-1]
        if stage.name != last.name:  # train.final_stage chose an earlier stage: build_model rebuilds that one
            module.spec.extra["final_stage"] = stage.name
        return module.model, module.spec

    def build_model(self, cfg: dict, spec: ModelSpec) -> torch.nn.Module:
        """The configured ``model:`` (by registered name) built from ``spec``."""
        opts = dict(cfg["model"])
        return build_model(spec, opts.pop("name"), **opts)

    def objective_context(self, cfg: dict, labels: LabelMap, train_enc: dict, spec: ModelSpec) -> dict:
        """Values that loss constructors may ask for by parameter name."""
        ctx = {"num_classes": labels.num_outputs, "num_speakers": len(labels.speakers),
               "class_names": labels.classes}
        return ctx

    def build_objective(self, cfg: dict, labels: LabelMap, train_enc: dict, spec: ModelSpec) -> Objective:
        ctx = self.objective_context(cfg, labels, train_enc, spec)
        terms = []
        for term in cfg["objective"]:
            term = dict(term)
            params = inspect.signature(loss_class(term["name"]).__init__).parameters
            for k, v in ctx.items():
                if k in params and k not in term:
                    term[k] = v
            if term.get("class_weights") == "balanced":
                counts = np.bincount(train_enc["emotion"][train_enc["emotion"] >= 0], minlength=labels.num_outputs)
                w = len(train_enc["emotion"]) / (labels.num_outputs * np.maximum(counts, 1))
                term["class_weights"] = w.tolist()
            terms.append(term)
        return Objective(terms)

    def train_sampler(self, cfg: dict, dataset, seed: int):
        """A sampler (or ``("batch_sampler", obj)``) for training; default: a (seed, epoch) shuffle, or with
        ``train.group_by_length: K`` batches of similar length from sorted groups of K batches
        (:class:`~serkit.data.samplers.LengthGroupedBatchSampler`) when the items have lengths (frames,
        waveforms; pooled statistics have none and are shuffled)."""
        from serkit.data.features import item_lengths
        from serkit.data.samplers import LengthGroupedBatchSampler, SeededShuffleSampler

        group = int(cfg["train"].get("group_by_length") or 0)
        lengths = item_lengths(dataset) if group else None
        if lengths is not None:
            return "batch_sampler", LengthGroupedBatchSampler(lengths, cfg["train"]["batch_size"], group, seed)
        return SeededShuffleSampler(len(dataset), seed)

    def batch_hook(self, cfg: dict, labels: LabelMap):
        """A callable ``(batch, module) -> batch`` applied to training batches (e.g. mixup), or None."""
        return

    def extra_test_metrics(self, outputs: dict, rows, labels: LabelMap, fold) -> dict:
        """Metrics beyond the task's: speaker verification EER when the model exposes speaker features."""
        out = {}
        if "speaker_features" in outputs:
            try:
                from serkit.verification import speaker_eer

                eer = speaker_eer(outputs["speaker_features"], rows["speaker"].astype(str).to_numpy())
                out["speaker_eer"] = float(eer[0] if isinstance(eer, tuple) else eer)
            except ImportError:
                pass
            except ValueError:  # one test speaker (or one utterance each): no target / non-target trials
                out["speaker_eer"] = None  # null in results.json, left out of the mean
                note = ("speaker_eer: no value, the test part has no pair of utterances of one speaker and of two "
                        "speakers (needs two test speakers with two utterances)")
                if isinstance(getattr(fold, "warnings", None), list) and note not in fold.warnings:
                    fold.warnings.append(note)
            if not fold.speaker_independent and "speaker_logits" in outputs:
                sidx = {s: i for i, s in enumerate(labels.speakers)}
                true = np.array([sidx.get(s, -1) for s in rows["speaker"].astype(str)])
                pred = outputs["speaker_logits"].argmax(-1)
                keep = true >= 0
                if keep.any():
                    from serkit.metrics import classification_metrics

                    m = classification_metrics(true[keep], pred[keep], labels.speakers)
                    out["speaker_wa"], out["speaker_ua"] = m["wa"], m["ua"]
        return out


@dataclass
class NoOptions:
    """A recipe without ``recipe_options`` (any key is unknown)."""


@register_recipe("baseline")
class BaselineRecipe(Recipe):
    """The configured model and objective, nothing else (SUPERB / EmoBox-style downstream)."""

    options_class = NoOptions
