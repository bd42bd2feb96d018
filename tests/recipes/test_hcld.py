"""HCLD recipe: model outputs, pair sampler, objective terms, EER in an end-to-end run_cv (tiny corpus)."""

import json

import numpy as np
import torch

from serkit.ablation.spec import load_table
from serkit.models.registry import ModelSpec
from serkit.recipes.catalog import get_recipe
from tests.models.test_hcld import SMALL, _batch
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401

#: the objective of configs/*/hcld.yaml, which the Table II rows of configs/ablations/hcld.yaml name term by term
HCLD_OBJECTIVE = [{"name": "cross_entropy"}, {"name": "hcld_speaker_ce"},
                  {"name": "icld", "margin": 0.5, "hinge": "text"},
                  {"name": "supcon", "feature_key": "emotion_features"}, {"name": "lcl"}]
ROWS_FILE = "configs/ablations/hcld.yaml"


def _tiny(root, **over):
    cfg = tiny_config(root, recipe="hcld", objective=HCLD_OBJECTIVE, **over)
    cfg["model"] = {"name": "hcld", "dim": 8, "extractor_opts": SMALL, **over.get("model", {})}
    return cfg


def _table2_row(base: dict, row: str) -> dict:
    """``base`` (a tiny config) turned into one row of the Table II grid of the HCLD rows file."""
    from serkit.config import load_config

    table = load_table(ROWS_FILE, "hcld", load_config(base), "table2")
    return load_config(base, {r.name: r for r in table.rows}[row].overrides)


def test_table2_grid_is_extractor_by_variant_with_the_configs_terms(tiny_corpus):  # noqa: F811
    from serkit.config import load_config

    table = load_table(ROWS_FILE, "hcld", load_config(_tiny(tiny_corpus)), "table2")
    assert [r.name for r in table.rows][:6] == ["cnn-emotion_only", "cnn-orth", "cnn-hcld", "cnn-no_supcon",
                                                "cnn-no_lcl", "lstm-emotion_only"]
    assert len(table.rows) == 15 and table.layout.rows == ["extractor", "variant"]
    off = _table2_row(_tiny(tiny_corpus), "transformer-emotion_only")
    assert off["model"]["emotion_extractor"] == "transformer" and off["model"]["speaker_extractor"] == "none"
    assert [t["name"] for t in off["objective"]] == ["cross_entropy"]
    orth = _table2_row(_tiny(tiny_corpus), "lstm-orth")
    assert orth["model"]["speaker_extractor"] == "lstm"
    assert [t["name"] for t in orth["objective"]] == ["cross_entropy", "hcld_speaker_ce", "orthogonality"]
    no_lcl = _table2_row(_tiny(tiny_corpus), "cnn-no_lcl")
    assert no_lcl["objective"][2] == {**HCLD_OBJECTIVE[2], **no_lcl["objective"][2]}  # the config's icld options
    assert "lcl" not in [t["name"] for t in no_lcl["objective"]]


def test_sampler_batches_contain_pairs_and_objective_terms(tiny_corpus):  # noqa: F811
    from serkit.data.labels import LabelMap
    from serkit.data.pairs import count_pairs
    from serkit.train.experiment import load_experiment_manifest

    cfg = _table2_row(_tiny(tiny_corpus), "cnn-hcld")
    manifest = load_experiment_manifest(cfg)
    labels = LabelMap.fit(manifest, "classification", [], list(manifest["id"]))

    class DS:  # what the recipe reads from a FeatureDataset
        enc = labels.encode(manifest)

        def __len__(self):
            return len(manifest)

    recipe = get_recipe("hcld")
    kind, sampler = recipe.train_sampler(cfg, DS(), seed=0)
    assert kind == "batch_sampler"
    batches = list(sampler)
    assert len(batches) >= 3
    for b in batches:
        pos, neg = count_pairs(DS.enc["emotion"][b], DS.enc["speaker"][b])
        assert pos >= 1 and neg >= 1
    spec = ModelSpec("classification", len(labels.classes), 2, 6, len(labels.speakers), list(labels.classes))
    obj = recipe.build_objective(cfg, labels, DS.enc, spec)
    assert list(obj.terms) == [t["name"] for t in HCLD_OBJECTIVE]
    assert obj.terms["lcl"].label_embeddings.shape[0] == len(labels.classes)
    model = recipe.build_model(cfg, spec)
    batch = _batch()
    batch["emotion"] = torch.tensor([0, 1, 2, 0, 1])
    total, parts = obj(model(batch), batch)
    assert set(parts) == {t["name"] for t in HCLD_OBJECTIVE} and torch.isfinite(total)
    total.backward()


def test_end_to_end_table2_rows_report_speaker_eer(tiny_corpus, tmp_path):  # noqa: F811
    """Two Table II rows through `serkit ablate --table table2`'s runner: each a run_cv, the table from their folds."""
    import pandas as pd

    from serkit.ablation.run import run_rows

    base = _tiny(tiny_corpus, features={"max_frames": 375}, train={"epochs": 2, "batch_size": 12})
    md = run_rows(base, tmp_path / "abl", ["cnn-emotion_only", "cnn-hcld"], folds_only=[0], rows_path=ROWS_FILE,
                  table="table2", log=lambda *a: None)
    res = json.loads((tmp_path / "abl" / "cnn-hcld" / "results.json").read_text())
    m = res["folds"][0]["metrics"]
    assert 0.0 <= m["speaker_eer"] <= 1.0 and 0.0 <= m["emotion_feature_eer"] <= 1.0
    assert "speaker_wa" not in m  # speaker-independent fold: the closed-set head is not scored
    df = pd.read_csv(tmp_path / "abl" / "table2.csv").set_index("row")
    assert len(df) == 15 and df.loc["cnn-hcld", "folds"] == 1 and df.loc["lstm-hcld", "folds"] == 0
    assert np.isnan(df.loc["cnn-emotion_only", "speaker_eer_mean"]) and df.loc["cnn-hcld", "speaker_eer_mean"] >= 0
    assert "speaker EER (X_s) (%)" in md and "| cnn-hcld | CNN | HCLD | 1 (0) |" in md
    md2 = run_rows(base, tmp_path / "abl", rows_path=ROWS_FILE, table="table2", table_only=True, log=lambda *a: None)
    assert md2 == md  # finished rows read back, nothing run


def test_random_protocol_scores_speaker_head(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    base = _tiny(tiny_corpus, protocol={"name": "random", "test_fraction": 0.2}, train={"epochs": 1, "batch_size": 12})
    cfg = _table2_row(base, "cnn-no_lcl")
    res = run_cv(cfg, tmp_path / "rnd", log=lambda *a: None)
    m = res["folds"][0]["metrics"]
    assert res["speaker_independent"] is False and {"speaker_wa", "speaker_ua", "speaker_eer"} <= set(m)


def test_recipe_options_are_typed_and_unknown_keys_named(tiny_corpus):  # noqa: F811
    import pytest

    from serkit.config import load_config
    from serkit.errors import ConfigError

    recipe = get_recipe("hcld")
    o = recipe.options(load_config(_tiny(tiny_corpus, recipe_options={"pair_sampler": False, "min_pos": 2})))
    assert (o.pair_sampler, o.min_pos, o.min_neg, o.text_model) == (False, 2, 1, "roberta-base")
    with pytest.raises(ConfigError, match=r"recipe_options \(hcld\): unknown key\(s\) \['min_pairs'\]"):
        recipe.options(load_config(_tiny(tiny_corpus, recipe_options={"min_pairs": 2})))
    with pytest.raises(ConfigError, match="recipe_options.frame_stride moved to the feature stage"):
        from serkit.recipes.mll import check_recipe_options

        check_recipe_options({"recipe_options": {"frame_stride": 2}})
    with pytest.raises(ConfigError, match=r"recipe_options \(mll\): unknown key"):
        check_recipe_options({"recipe_options": {"anything": 1}})


def test_standardised_input_is_fitted_in_training_and_reaches_predict_and_onnx(tiny_corpus, tmp_path):  # noqa: F811
    """model.input_norm: standardize: `serkit train` fits the statistics on the training utterances, the saved model
    carries them, and the Recognizer and the ONNX graph apply them (export_onnx checks onnxruntime against torch)."""
    from serkit.export import export_onnx
    from serkit.inference.recognizer import Recognizer
    from serkit.train.final import train_final

    cfg = _tiny(tiny_corpus, train={"epochs": 1, "batch_size": 12}, model={"input_norm": "standardize"})
    model_dir = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    rec = Recognizer.from_pretrained(model_dir)
    norm = rec.model.input_norm
    assert norm is not None and float(norm.std.min()) > 0 and float(norm.mean.abs().max()) > 0  # fitted, not the init
    wav = min((tiny_corpus / "spk0").glob("*.wav"))
    assert rec.predict(str(wav))["label"] in {"low", "mid", "high"}
    assert export_onnx(model_dir, log=lambda *a: None).exists()
