"""IF-MVSE recipe: end to end on a tiny corpus (fbank-40 + fbank-80 views), validation-only weight search, schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import serkit.recipes.if_mvse as mvse
from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.train.cv import run_cv
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401

SETS = [{"name": "S1", "views": ["fb40"]}, {"name": "S2", "views": ["fb40", "fb80"]}, {"name": "S3", "views": ["fb80"]}]


def _cfg(root, task="regression", **over):
    cfg = tiny_config(root, recipe="if_mvse", task=task, train={"epochs": 3, "lr": 0.003, "patience": 5},
                      features={"layers": None})
    cfg["encoder"] = [{"id": "fbank-40", "name": "fb40"}, {"id": "fbank-80", "name": "fb80", "pooling": "stats"}]
    cfg["model"] = {"name": "if_mvse", "hidden": [16], "dropout": 0.0, "fuse_dim": 16}
    cfg["recipe_options"] = {"score_sets": SETS, "pooling": "mean"}
    if task == "regression":
        cfg["targets"] = ["arousal", "valence"]
        cfg["objective"] = [{"name": "ccc"}]
    cfg.update(over)
    return cfg


def quiet(*a):
    pass


def test_regression_end_to_end_schema(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv
    out = tmp_path / "reg"
    summary = run_cv(_cfg(tiny_corpus), out, log=quiet)  # the one runner
    res = json.loads((out / "results.json").read_text())
    assert {"name", "recipe", "task", "protocol", "speaker_independent", "encoder", "folds", "mean", "std"} <= set(res)
    assert res["recipe"] == "if_mvse" and res["speaker_independent"] and len(res["folds"]) == 3
    for f in res["folds"]:
        assert {"fold", "test_speakers", "n_test", "metrics"} <= set(f)
        assert {"ccc_arousal", "ccc_valence", "ccc_mean"} <= set(f["metrics"])
        w = f["extras"]["weights"]
        assert set(w) == {"S1", "S2", "S3"} and all(0 <= x <= 1 for x in w.values())
        assert all(abs(x * 100 - round(x * 100)) < 1e-6 for x in w.values())  # 0.01 grid
        # the validation search includes every one-hot weight, so it can never lose to a single set there
        sm = f["stage_metrics"]
        assert set(sm) == {"S1", "S2", "S3", "combine"}
        best_single = max(sm[n]["val"]["ccc_mean"] for n in ("S1", "S2", "S3"))
        assert sm["combine"]["val"]["ccc_mean"] >= best_single - 1e-9
        assert sm["combine"]["test"] == pytest.approx(f["metrics"])
        assert f["extras"]["best_single_view"]["name"] in ("S1", "S3")
    assert set(res["stages"]) == {"S1", "S2", "S3", "combine"}
    assert res["mean"]["ccc_mean"] == pytest.approx(np.mean([f["metrics"]["ccc_mean"] for f in res["folds"]]))
    assert "Stages" in (out / "report.md").read_text()
    assert summary["mean"] == res["mean"]
    again = run_cv(_cfg(tiny_corpus), out, log=quiet)  # resumed: every fold reused
    assert again["mean"] == summary["mean"]


def test_views_come_from_the_feature_stage(tiny_corpus, tmp_path):  # noqa: F811
    """Per-view layer choice and pooling, speaker-normalised views (the statistics applied by the stage)."""
    from serkit.train.cv import run_cv

    cfg = _cfg(tiny_corpus, features={"cache_dir": str(tiny_corpus / "cache"), "normalize": "speaker"})
    cfg["encoder"][1]["features"] = {"layers": 0}
    dims = {}
    original = mvse.fold_views

    def spy(ctx, labels):
        sets = original(ctx, labels)
        dims.update({n: v.shape[1] for n, v in sets[0].views.items()})
        return sets

    import serkit.recipes.if_mvse as m

    m.fold_views = spy
    try:
        res = run_cv(cfg, tmp_path / "spk", folds_only=[0], log=quiet)
    finally:
        m.fold_views = original
    assert dims == {"fb40": 40, "fb80": 160}  # mean of the last fbank-40 layer; mean+std of fbank-80
    assert res["feature_normalisation"].startswith("speaker")


def test_weights_never_read_test_data(tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    from serkit.train.cv import run_cv

    cfg = _cfg(tiny_corpus)
    ref = run_cv(cfg, tmp_path / "ref", folds_only=[0], log=quiet)
    original = mvse.fold_views

    def noisy(ctx, labels):
        train, val, test = original(ctx, labels)
        rng = np.random.default_rng(0)
        for k, v in test.views.items():
            test.views[k] = v + torch.from_numpy(rng.normal(0, 50, v.shape).astype(np.float32))
        return train, val, test

    monkeypatch.setattr(mvse, "fold_views", noisy)
    noise = run_cv(cfg, tmp_path / "noise", folds_only=[0], log=quiet)
    a, b = ref["folds"][0], noise["folds"][0]
    assert a["extras"]["weights"] == b["extras"]["weights"]
    assert a["stage_metrics"]["combine"]["val"] == pytest.approx(b["stage_metrics"]["combine"]["val"])
    assert a["metrics"]["ccc_mean"] != pytest.approx(b["metrics"]["ccc_mean"])


def test_classification_variant(tiny_corpus, tmp_path):  # noqa: F811
    cfg = _cfg(tiny_corpus, task="classification")
    cfg["recipe_options"] = {"score_sets": SETS[:2]}  # pooling auto: stats for fbank views
    res = run_cv(cfg, tmp_path / "cls", folds_only=[1], log=quiet)
    f = res["folds"][0]
    assert f["fold"] == 1 and {"ua", "wa", "macro_f1"} <= set(f["metrics"]) and "confusion" in f
    assert np.asarray(f["confusion"]).sum() == f["n_test"]
    sm = f["stage_metrics"]
    assert sm["combine"]["val"]["ua"] >= max(sm[n]["val"]["ua"] for n in ("S1", "S2")) - 1e-9
    assert res["mean"]["ua"] > 0.5, "pitch classes from filterbank statistics are easy"


def test_config_errors_and_cli(tiny_corpus):  # noqa: F811
    cfg = load_config(_cfg(tiny_corpus))
    assert [v["pooling"] for v in mvse.view_specs(cfg)] == ["mean", "stats"]
    cfg["recipe_options"] = {"score_sets": [{"name": "X", "views": ["nope"]}]}
    with pytest.raises(ConfigError, match="unknown view"):
        mvse.score_sets(cfg, ["fb40", "fb80"])
    cfg["recipe_options"] = {}
    assert [s["views"] for s in mvse.score_sets(cfg, ["a", "b", "c"])] == [["a"], ["b"], ["c"], ["a", "b"], ["b", "c"]]
    cfg["recipe_options"] = {"bogus": 1}
    with pytest.raises(ConfigError, match="bogus"):
        mvse.options(cfg)
