"""The stage list of a fold: what a recipe declares (``Recipe.stages``) and the runner executes in order.

A single-stage recipe has one :class:`TrainStage` (the default). A multi-stage method lists several, the way
SpeechBrain calls one Brain several times: GMP-ATL = stage 1, a clustering :class:`Step`, stage 2, stage 3; IF-MVSE
= one :class:`TrainStage` per score set, then a ``combine`` :class:`Step` over their validation outputs. The runner
(:func:`serkit.train.fit.fit_fold`) owns everything around them: the feature stage, Lightning Trainer, loaders,
checkpoints and resumption, scoring, results.json and the report. A recipe never builds any of those.

Every stage of a multi-stage list lives in ``<root>/<name>-<key>/`` with a marker ``stage.json`` (``root`` is the
fold folder, or ``stage_root/fold<k>`` so that runs sharing a stage, e.g. ablation rows, compute it once). The key
hashes what the stage depends on (fold split, encoder, feature stage, the stage's own ``key``, objective and
schedule, and the keys of every stage before it); a rerun with a matching marker reuses the stage (its saved
trainable state and validation / test outputs), a killed training stage resumes from its ``checkpoints/last.ckpt``.

Outputs: a training stage with ``score=True`` keeps the model outputs of the validation and test items
(``{"val": {key: (n, ...)}, "test": {...}}``, e.g. ``logits`` / ``prediction``); a step may return outputs too
(``combine``: the weighted scores). The last stage with test outputs gives the fold's result; every scored stage's
test metrics are reported as ``stage_metrics``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from serkit.train.datasets import model_spec
from serkit.train.module import SERModule

#: ``train`` settings that cannot change a stage's result (data-loading processes, progress bars): left out of the
#: stage keys, so a rerun with another worker count reuses the stages
#: ``final_stage`` picks which finished stage is the fold's result; no stage trains differently for it.
RESULT_NEUTRAL_TRAIN_KEYS = ("num_workers", "progress", "final_stage")


def schedule(train: dict) -> dict:
    """``train`` without :data:`RESULT_NEUTRAL_TRAIN_KEYS` (what a stage key hashes)."""
    return {k: v for k, v in train.items() if k not in RESULT_NEUTRAL_TRAIN_KEYS}


def stable_hash(obj) -> str:
    """12 hex digits of SHA-1 over ``obj`` as sorted JSON."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class TrainStage:
    """One Lightning training run of the fold (SpeechBrain: one ``Brain.fit``).

    Attributes:
        name: folder / report name.
        model: ``(ctx, spec) -> nn.Module``; default ``recipe.build_model(cfg, spec)``.
        objective: loss terms (config ``objective:`` form); default the config's.
        train: overrides of the config's ``train:`` for this stage (epochs, lr, ...).
        select: ``"best"`` (the checkpoint with the best validation score) or ``"last"``.
        score: keep validation and test outputs (the last scored stage is the fold's result).
        refit: after selection, retrain on train + validation for the chosen epoch count (``train.refit``).
        datasets: ``(ctx, labels) -> (train, val, test)``; default ``recipe.build_datasets`` on the feature stage.
        init: ``(ctx, model) -> None`` before training, e.g. load an earlier stage's encoder weights.
        key: what else the stage's result depends on (hashed into its folder name).
    """

    name: str = "main"
    model: Callable | None = None
    objective: list[dict] | None = None
    train: dict = field(default_factory=dict)
    select: str = "best"
    score: bool = True
    refit: bool = False
    datasets: Callable | None = None
    init: Callable | None = None
    key: Any = None


@dataclass
class Step:
    """A computation on the fold between or after training stages (clustering, combining score sets).

    ``run(ctx) -> dict``: JSON-able values plus, optionally, ``"arrays"`` (``{name: array}``, saved in
    ``arrays.npz``) and ``"outputs"`` (``{"val": {...}, "test": {...}}`` like a scored training stage).
    """

    name: str
    run: Callable
    key: Any = None


@dataclass
class StageResult:
    """A finished stage: its folder, key, marker, outputs, and (when it ran in this process) the trained module."""

    name: str
    dir: Path
    key: str
    marker: dict
    outputs: dict | None = None
    arrays: dict | None = None
    module: nn.Module | None = None

    def state(self) -> dict:
        """The stage's saved trainable state (``state.safetensors``)."""
        from safetensors.torch import load_file

        return load_file(str(self.dir / "state.safetensors"))


@dataclass
class StageContext:
    """What a stage hook sees of its fold."""

    cfg: dict
    manifest: pd.DataFrame
    fold: Any
    labels: Any
    recipe: Any
    features: dict  # view name -> FeatureStage
    fold_dir: Path
    root: Path
    seed: int
    results: dict[str, StageResult] = field(default_factory=dict)
    stage: TrainStage | Step | None = None
    #: the running step's folder (its own files besides the marker)
    stage_dir: Path | None = None
    #: values a stage hands to the stages after it in this fold (e.g. the feature widths its datasets found)
    passed: dict[str, Any] = field(default_factory=dict)

    def feature(self, view: str = "main"):
        """The feature stage of ``view`` (``main`` for single-encoder configs)."""
        return self.features[view]

    @property
    def device(self):
        """Where no-grad passes of a stage run (:func:`serkit.train.scoring.inference_device`)."""
        from serkit.train.scoring import inference_device

        return inference_device(self.cfg["train"])


# -- saving and reusing stages ---------------------------------------------------------------------------------
def read_marker(stage_dir: Path, key: str) -> dict | None:
    p = stage_dir / "stage.json"
    if p.exists():
        m = json.loads(p.read_text())
        if m.get("key") == key and all((stage_dir / f).exists() for f in m.get("files", [])):
            return m
    return None


def save_outputs(path: Path, outputs: dict) -> None:
    flat = {f"{part}__{k}": np.asarray(v) for part, outs in outputs.items() for k, v in outs.items()}
    np.savez(path, **flat)


def load_outputs(path: Path) -> dict:
    out: dict = {}
    with np.load(path) as z:
        for name in z.files:
            part, k = name.split("__", 1)
            out.setdefault(part, {})[k] = z[name]
    return out


def trained_state(model: nn.Module) -> dict:
    """What a stage changed: trainable parameters and buffers (e.g. batch-norm statistics); frozen encoder weights
    are left out (they are rebuilt from the pretrained encoder)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {n: t.detach().cpu().contiguous().clone() for n, t in model.state_dict().items() if n not in frozen}


def chosen_stage(ctx: StageContext, names: list[str]) -> str:
    """Which of the scored stages ``names`` (in stage order) is the fold's result: the last one
    (``train.final_stage: last``, the default), or with ``train.final_stage: best_val`` the one whose selected
    checkpoint scored best on the validation speakers (its ``best_val``: ``train.monitor``; the test part plays no
    part; ties keep the later stage; a stage without a validation score is never chosen over one with it). A
    multi-stage method whose later stages do not help on a corpus then keeps its earlier model, and says so
    (``final_stage`` in each fold's result)."""
    if ctx.cfg["train"]["final_stage"] == "last" or len(names) == 1:
        return names[-1]
    from serkit.train.select import best

    later_first = names[::-1]
    return later_first[best([ctx.results[n].marker.get("best_val") for n in later_first])]


def final_module(ctx: StageContext, stages: list):
    """The trained module of the fold's final training stage (:func:`chosen_stage`; rebuilt from its saved state
    when it was reused)."""
    trained = [s for s in stages if isinstance(s, TrainStage)]
    if ctx.cfg["train"]["final_stage"] != "last":  # only a scored stage has a validation figure to compare
        trained = [s for s in trained if s.score]
    name = chosen_stage(ctx, [s.name for s in trained])
    last = next(s for s in trained if s.name == name)
    r = ctx.results[last.name]
    if r.module is not None:
        return r.module, last
    spec = model_spec(ctx.cfg, ctx.labels, next(iter(ctx.features.values())))
    model = last.model(ctx, spec) if last.model is not None else ctx.recipe.build_model(ctx.cfg, spec)
    model.load_state_dict(r.state(), strict=False)
    module = SERModule(model, None, ctx.labels, ctx.cfg["train"])
    module.spec = spec
    return module, last
