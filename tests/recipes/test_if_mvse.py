"""IF-MVSE recipe: end to end on a tiny corpus (fbank-40 + fbank-80 views), validation-only weight search, schema."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import serkit.recipes.if_mvse as mvse
from serkit.config import load_config
from serkit.errors import ConfigError
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401

SETS = [{"name": "S1", "views": ["fb40"]}, {"name": "S2", "views": ["fb40", "fb80"]}, {"name": "S3", "views": ["fb80"]}]


def _cfg(root, task="regression", **over):
    cfg = tiny_config(root, recipe="if_mvse", task=task, train={"epochs": 3, "lr": 0.003, "patience": 5})
    cfg["encoder"] = [{"id": "fbank-40", "name": "fb40"}, {"id": "fbank-80", "name": "fb80", "pooling": "stats"}]
    cfg["model"] = {"name": "if_mvse", "hidden": [16], "dropout": 0.0, "fuse_dim": 16}
    cfg["recipe_options"] = {"score_sets": SETS, "pooling": "mean", "layer": -1}
    if task == "regression":
        cfg["targets"] = ["arousal", "valence"]
        cfg["objective"] = [{"name": "ccc"}]
    cfg.update(over)
    return cfg


def quiet(*a):
    pass


def test_regression_end_to_end_schema(tiny_corpus, tmp_path):  # noqa: F811
    out = tmp_path / "reg"
    summary = mvse.run_mvse(_cfg(tiny_corpus), out, log=quiet)
    res = json.loads((out / "results.json").read_text())
    # run_cv's schema ...
    assert {"name", "recipe", "task", "protocol", "speaker_independent", "encoder", "folds", "mean", "std"} <= set(res)
    assert res["recipe"] == "if_mvse" and res["speaker_independent"] and len(res["folds"]) == 3
    for f in res["folds"]:
        assert {"fold", "test_speakers", "n_test", "metrics"} <= set(f)
        assert {"ccc_arousal", "ccc_valence", "ccc_mean"} <= set(f["metrics"])
        assert set(f["weights"]) == {"S1", "S2", "S3"} and all(0 <= w <= 1 for w in f["weights"].values())
        assert all(abs(w * 100 - round(w * 100)) < 1e-6 for w in f["weights"].values())  # 0.01 grid
        # the validation search includes every one-hot weight, so it can never lose to a single set there
        best_single = max(s["val"]["ccc_mean"] for s in f["score_sets"].values())
        assert f["val_metrics"]["ccc_mean"] >= best_single - 1e-9
        assert f["score_sets"]["S2"]["views"] == ["fb40", "fb80"]
    # ... plus the IF-MVSE tables
    assert set(res["score_sets"]) == {"S1", "S2", "S3"}
    for s in res["score_sets"].values():
        assert {"views", "mean", "std", "val_mean", "val_std"} <= set(s) and "ccc_mean" in s["mean"]
    assert len(res["weights"]) == 3 and res["validation_check"]["combination_ge_best_single_view_on_val"]
    assert res["mean"]["ccc_mean"] == pytest.approx(np.mean([f["metrics"]["ccc_mean"] for f in res["folds"]]))
    report = (out / "report.md").read_text()
    assert "weighted combination" in report and "Weights found on validation" in report
    assert summary["mean"] == res["mean"]
    # views: fbank-40 mean (40-d) and fbank-80 mean+std (160-d); resumed run reuses every result
    mats = mvse.load_views(load_config(_cfg(tiny_corpus)), _manifest(tiny_corpus), out, quiet)[1]
    assert mats["fb40"].shape[1] == 40 and mats["fb80"].shape[1] == 160
    again = mvse.run_mvse(_cfg(tiny_corpus), out, log=quiet)
    assert again["mean"] == summary["mean"]


def _manifest(root):
    from serkit.train.cv import load_experiment_manifest

    return load_experiment_manifest(load_config(_cfg(root)))


def test_weights_never_read_test_data(tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    cfg = _cfg(tiny_corpus)
    ref = mvse.run_mvse(cfg, tmp_path / "ref", folds_only=[0], log=quiet)
    test_ids = set(json.loads((tmp_path / "ref" / "folds.json").read_text())[0]["test"])
    original = mvse.load_views

    def noisy(*a, **k):
        manifest, mats = original(*a, **k)
        rows = manifest["id"].astype(str).isin(test_ids).to_numpy()
        rng = np.random.default_rng(0)
        return manifest, {n: np.where(rows[:, None], rng.normal(0, 50, m.shape), m).astype(np.float32)
                          for n, m in mats.items()}

    monkeypatch.setattr(mvse, "load_views", noisy)
    noise = mvse.run_mvse(cfg, tmp_path / "noise", folds_only=[0], log=quiet)
    a, b = ref["folds"][0], noise["folds"][0]
    assert a["weights"] == b["weights"] and a["val_metrics"] == pytest.approx(b["val_metrics"])
    assert a["metrics"]["ccc_mean"] != pytest.approx(b["metrics"]["ccc_mean"])


def test_classification_variant(tiny_corpus, tmp_path):  # noqa: F811
    cfg = _cfg(tiny_corpus, task="classification")
    cfg["recipe_options"] = {"score_sets": SETS[:2]}  # pooling auto: stats for fbank views
    res = mvse.run_mvse(cfg, tmp_path / "cls", folds_only=[1], log=quiet)
    f = res["folds"][0]
    assert f["fold"] == 1 and {"ua", "wa", "macro_f1"} <= set(f["metrics"]) and "confusion" in f
    assert np.asarray(f["confusion"]).sum() == f["n_test"]
    assert f["val_metrics"]["ua"] >= max(s["val"]["ua"] for s in f["score_sets"].values()) - 1e-9
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
    parser = argparse.ArgumentParser()
    mvse.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["mvse", "c.yaml", "--out", "d", "--folds", "0,2"])
    assert args.out == "d" and args.folds == "0,2" and args.func is mvse._main_args
