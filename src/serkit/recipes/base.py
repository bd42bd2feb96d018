"""The recipe interface: how an experiment composes a model, an objective, a sampler and batch hooks.

A recipe subclasses :class:`Recipe`, overrides what it needs, and registers under a name that configs use
(``recipe: mll``). The default recipe trains the configured ``model`` with the configured ``objective``.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from serkit.data.labels import LabelMap
from serkit.errors import ConfigError
from serkit.losses.base import Objective, loss_class
from serkit.models.registry import ModelSpec, build_model

_RECIPES: dict[str, type] = {}


def register_recipe(name: str):
    def deco(cls):
        cls.name = name
        _RECIPES[name] = cls
        return cls

    return deco


def get_recipe(name: str) -> Recipe:
    import serkit.recipes  # noqa: F401  (registers every recipe)

    if name not in _RECIPES:
        raise ConfigError(f"recipe={name!r} is unknown; known: {sorted(_RECIPES)}")
    return _RECIPES[name]()


class Recipe:
    name = "baseline"
    #: "cache" (features from the feature cache) or "waveform" (the encoder runs in the training loop)
    default_source = "cache"

    def build_model(self, cfg: dict, spec: ModelSpec) -> torch.nn.Module:
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
        """A sampler (or ``("batch_sampler", obj)``) for training; default: a (seed, epoch) shuffle."""
        from serkit.data.samplers import SeededShuffleSampler

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


@register_recipe("baseline")
class BaselineRecipe(Recipe):
    """The configured model and objective, nothing else (SUPERB / EmoBox-style downstream)."""
