"""A trained IF-MVSE predictor as one module: every view's input transform, every score set's model and the
weighted combination chosen on validation (what ``serkit train`` saves of the recipe's stage list).

Input: ``batch["pooled_views"]`` ``{view: (batch, stored layers, 2*dim)}``, each view's pooled statistics (frame mean
then std per stored layer, as the feature cache holds them), already speaker-normalised where the view's feature
stage normalises (the caller's feature stage does that, as for every other model). Per view, :class:`ViewInput`
applies the rest of the feature stage the score sets were trained on (layer choice, frame-mean or mean + std
pooling, training-fold z-scores); each score set (:class:`~serkit.models.fusion.ScoreSetModel`) scores its views;
the scores are combined as ``sum_i w_i S_i`` (:func:`serkit.fusion_weights.combine`).

Output: regression ``{"prediction": (batch, attributes)}`` (the weighted sum itself); classification
``{"probs": (batch, classes), "logits": (batch, classes)}``: with ``class_scores: probs`` the weighted sum of the
sets' softmax probabilities divided by the sum of the weights (a distribution; same argmax), with ``logits`` the
softmax of the weighted sum of logits. ``"score_sets"``: ``{name: (batch, outputs)}`` each set's own scores (softmax
probabilities or logits as combined; predictions).

The description (JSON, ``meta.json``'s ``spec.extra.ensemble``)::

    {"views": [{"name", "layers": [store positions] | null, "pooling": "mean" | "stats", "width",
                "normalize": "speaker" | "none"}, ...],
     "score_sets": [{"name", "views": [...]}, ...], "weights": [w_i, ...] (aligned with score_sets),
     "class_scores": "probs" | "logits", "model": {ScoreSetModel options: hidden, dropout, fuse_dim, ...}}

The z-score statistics are buffers (``views.<i>.mean`` / ``.std``), saved with the score sets' weights
(``sets.<i>.…``) in one safetensors file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from serkit.errors import ConfigError
from serkit.models.fusion import ScoreSetModel


class ViewInput(nn.Module):
    """One view's pooled statistics ``(batch, stored layers, 2*dim)`` -> its score-set input ``(batch, width)``:
    the chosen layers (``layers``: store positions, None = all), the frame mean (``pooling="mean"``) or mean + std
    (``"stats"``), flattened, z-scored with the training fold's ``mean`` / ``std`` ``(width,)`` (buffers)."""

    def __init__(self, width: int, layers: Sequence[int] | None = None, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "stats"):
            raise ConfigError(f"ViewInput: pooling must be 'mean' or 'stats', got {pooling!r}")
        self.layers = None if layers is None else [int(i) for i in layers]
        self.pooling = pooling
        self.register_buffer("mean", torch.zeros(int(width)))
        self.register_buffer("std", torch.ones(int(width)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled.float() if self.layers is None else pooled.float()[:, self.layers]
        if self.pooling == "mean":
            x = x[..., : x.shape[-1] // 2]
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"ViewInput: the view gives {x.shape[1]} values per item, the model expects "
                             f"{self.mean.shape[0]} (another encoder or layer choice?)")
        return (x - self.mean) / self.std


class ScoreSetEnsemble(nn.Module):
    """The views, the score sets and their weighted combination (module docstring); built from its description."""

    def __init__(self, description: dict, task: str, num_outputs: int):
        super().__init__()
        views, sets = list(description["views"]), list(description["score_sets"])
        weights = [float(w) for w in description["weights"]]
        if len(weights) != len(sets) or not any(weights):
            raise ConfigError(f"ScoreSetEnsemble: {len(sets)} score sets need as many weights, not all zero; got "
                              f"{weights}")
        self.task, self.class_scores = task, description.get("class_scores", "probs")
        self.view_names = [v["name"] for v in views]
        self.normalize = {v["name"]: v["normalize"] for v in views}
        self.views = nn.ModuleList(ViewInput(v["width"], v.get("layers"), v["pooling"]) for v in views)
        width = {v["name"]: int(v["width"]) for v in views}
        opts = dict(description.get("model") or {})
        self.set_names = [s["name"] for s in sets]
        self.sets = nn.ModuleList(ScoreSetModel({n: width[n] for n in s["views"]}, s, task, num_outputs, **opts)
                                  for s in sets)
        self.views_of = [list(s["views"]) for s in sets]
        self.weights = weights

    def view_inputs(self, pooled_views: dict) -> dict[str, torch.Tensor]:
        """``{view: (batch, stored layers, 2*dim)}`` -> ``{view: (batch, width)}`` (the score sets' inputs)."""
        missing = [v for v in self.view_names if v not in pooled_views]
        if missing:
            raise KeyError(f"ScoreSetEnsemble: no features for view(s) {missing}")
        return {n: m(pooled_views[n]) for n, m in zip(self.view_names, self.views, strict=True)}

    def forward(self, batch: dict) -> dict:
        x = self.view_inputs(batch["pooled_views"])
        scores = {}
        for name, model, views in zip(self.set_names, self.sets, self.views_of, strict=True):
            out = model({"views": {v: x[v] for v in views}})
            s = out["logits" if self.task == "classification" else "prediction"].float()
            scores[name] = torch.softmax(s, -1) if self.task == "classification" and self.class_scores == "probs" \
                else s
        total = sum(w * s for w, s in zip(self.weights, scores.values(), strict=True))
        if self.task != "classification":
            return {"prediction": total, "score_sets": scores}
        probs = total / sum(self.weights) if self.class_scores == "probs" else torch.softmax(total, -1)
        return {"probs": probs, "logits": torch.log(probs.clamp_min(1e-12)), "score_sets": scores}
