"""Experiments without a config file: ``serkit cv TABLE.csv`` / ``serkit cv DIR --layout folder`` (and
``serkit train``) build the config from the data and a recipe's default settings.

- Data: a user table (the ``csv`` reader: ``path, emotion[, speaker, gender, ...]``), a folder per class (the
  ``folder`` reader), or a manifest that ``serkit prepare`` wrote for a known corpus (its ``corpus`` column names
  the reader, whose published protocol is then used).
- Protocol: the known corpus's own; otherwise ``speaker_kfold`` (balanced groups, ``k`` = min(5, speakers)) when the
  table names at least three speakers, ``leave_one_session_out`` never implicitly, and the speaker-DEPENDENT
  ``random`` split (labelled so in every result) when it names none.
- Class set: every class of the table (``--set class_set=...`` maps or drops).
- Recipe: ``baseline`` (:data:`BASELINE`), or ``--recipe NAME``: the model / objective / schedule parts of
  ``configs/ravdess/NAME.yaml`` (the recipe's reference config), with this module's data parts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from serkit.config_defaults import DEFAULTS
from serkit.errors import ConfigError

#: The default head: the RAVDESS baseline (pooled mean+std of every layer -> batch norm -> linear), with its
#: regularisation and the feature normalisation chosen per fold on the validation speakers (serkit.train.select).
#: How it is trained and which regularisation it chooses among, per task: :data:`HEAD_TRAINING` (the grids span the
#: strength that matters for a linear head on ~7000 standardised features).
BASELINE: dict = {
    "recipe": "baseline",
    "encoder": {"id": "openai/whisper-base", "mode": "native", "layers": "all"},
    "features": {"level": "pooled", "normalize": "auto", "layers": "all"},
    "model": {"name": "pooled_mlp", "hidden": [], "dropout": 0.3, "input_norm": "batchnorm"},
    "train": {"epochs": 80, "batch_size": 32, "lr": 0.0003, "weight_decay": 0.1, "patience": 20, "seed": 0,
              "refit": True},
}
#: How the default head is trained per task, with the regularisation it chooses on validation (``train.select``).
#: Classification: AdamW with its weight decay from the grid. Regression: the same linear head fitted in closed
#: form (``train.solver: ridge``: standardised features, ridge penalty from the grid). On TAVA's ~230 training
#: utterances a gradient-trained head stayed 3 points below ridge regression on global features (CCC 0.824 against
#: 0.852, weight decay 0.1-1000, CCC or MSE loss, AdamW / Adam / SGD), while the closed form gets 0.856.
HEAD_TRAINING = {
    "classification": {"select": {"train.weight_decay": [0.1, 10.0, 100.0]}},
    "regression": {"solver": "ridge", "select": {"train.ridge_alpha": [1.0, 10.0, 100.0, 1000.0, 10000.0]}},
}
#: The objective of the default head per task.
OBJECTIVES = {"classification": [{"name": "cross_entropy", "class_weights": "balanced"}],
              "regression": [{"name": "ccc"}]}
#: Parts of a recipe's reference config that a table experiment takes over (the rest comes from the data).
RECIPE_PARTS = ("recipe", "encoder", "features", "model", "objective", "augment", "sampler", "train",
                "recipe_options", "predict")
#: Where ``--recipe NAME`` looks for ``NAME.yaml`` (the recipe's reference config).
RECIPE_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "ravdess"


def is_config(target: str | Path) -> bool:
    return Path(target).suffix.lower() in (".yaml", ".yml")


def recipe_defaults(recipe: str | None) -> dict:
    """The settings of ``recipe`` (default ``baseline``) that a table experiment uses."""
    if recipe in (None, "baseline"):
        return copy.deepcopy(BASELINE)
    from serkit.config import load_config_raw

    path = RECIPE_CONFIGS / f"{recipe}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in RECIPE_CONFIGS.glob("*.yaml")) if RECIPE_CONFIGS.is_dir() else []
        raise ConfigError(f"--recipe {recipe}: no reference config {path}; known: {['baseline', *known]}")
    raw = load_config_raw(path)
    return {k: copy.deepcopy(raw[k]) for k in RECIPE_PARTS if k in raw}


def _read(target: Path, layout: str | None) -> tuple[dict, pd.DataFrame]:
    """``({corpus, root} or {manifest}, manifest)`` for a table, a prepared manifest or a folder."""
    from serkit.corpora import available, prepare
    from serkit.manifest import read_manifest

    if target.is_dir() or layout == "folder":
        if layout not in (None, "folder"):
            raise ConfigError(f"{target} is a folder; --layout must be 'folder', got {layout!r}")
        if not target.is_dir():
            raise ConfigError(f"--layout folder: {target} is not a folder")
        return {"corpus": "folder", "root": str(target)}, prepare("folder", target)
    if not target.is_file():
        raise ConfigError(f"{target}: no such table, folder or config")
    if layout not in (None, "csv") and target.suffix.lower() == ".csv":
        raise ConfigError(f"--layout {layout!r} does not fit the table {target}; use --layout csv or leave it out")
    if target.suffix.lower() == ".parquet":
        return {"manifest": str(target)}, read_manifest(target)
    head = pd.read_csv(target, nrows=5)
    known = set(available()) - {"csv", "folder"}
    if {"id", "path", "duration", "corpus"} <= set(head.columns) and set(head["corpus"].astype(str)) <= known:
        return {"manifest": str(target)}, read_manifest(target)  # written by `serkit prepare <corpus>`
    return {"corpus": "csv", "root": str(target)}, prepare("csv", target)


def data_protocol(manifest: pd.DataFrame) -> dict:
    """The protocol for a table (see the module docs)."""
    from serkit.corpora import get_reader

    corpora = sorted(manifest["corpus"].astype(str).unique()) if "corpus" in manifest.columns else []
    if len(corpora) == 1 and corpora[0] not in ("csv", "folder"):
        return dict(get_reader(corpora[0]).default_protocol)
    speakers = sorted(set(manifest["speaker"].astype(str)) - {"unknown"})
    if len(speakers) >= 3 and (manifest["speaker"].astype(str) != "unknown").all():
        return {"name": "speaker_kfold", "k": min(5, len(speakers))}
    return {"name": "random", "test_fraction": 0.2}


def table_config(target: str | Path, *, layout: str | None = None, recipe: str | None = None,
                 task: str = "classification") -> dict:
    """A config (dict, before :func:`serkit.config.load_config`) for the data at ``target``."""
    target = Path(target)
    data, manifest = _read(target, layout)
    cfg = recipe_defaults(recipe)
    if task not in OBJECTIVES:
        raise ConfigError(f"--task {task!r} is not one of {sorted(OBJECTIVES)}")
    if recipe in (None, "baseline") or "objective" not in cfg:
        cfg["objective"] = copy.deepcopy(OBJECTIVES[task])
    if recipe in (None, "baseline"):
        cfg["train"].update(copy.deepcopy(HEAD_TRAINING[task]))
    cfg.update(data)
    cfg["name"] = f"{target.stem}-{cfg.get('recipe', DEFAULTS['recipe'])}"
    cfg["task"] = task
    cfg["protocol"] = data_protocol(manifest)
    if task == "regression":
        targets = [c for c in ("arousal", "valence", "dominance") if c in manifest.columns]
        if not targets:
            raise ConfigError(f"{target}: --task regression needs arousal / valence / dominance columns")
        cfg["targets"] = targets
    return cfg
