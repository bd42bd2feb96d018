"""The one fold runner: every registered recipe through the feature stage, the stage list, a recipe made of hooks
only, every config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from serkit.config import load_config
from serkit.data.normalize import SpeakerNormalizer
from serkit.errors import ConfigError
from serkit.recipes.base import Recipe, register_recipe
from serkit.recipes.catalog import get_recipe, registered_recipes
from serkit.train.cv import run_cv
from serkit.train.stages import TrainStage
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
QUIET = {"log": lambda *a: None}


# -- a fifth recipe: hooks only (the example of docs/developing.md) ------------------------------------------------
@register_recipe("warm_start_example")
class WarmStartExample(Recipe):
    """Two stages: a head trained with label smoothing, then the same head fine-tuned with plain cross-entropy at a
    lower learning rate; the runner does everything else (features, Trainer, resume, scoring, results, report)."""

    def stages(self, cfg: dict) -> list:
        def warm_start(ctx, model):  # the second stage starts from the first one's weights
            model.load_state_dict(ctx.results["smooth"].state(), strict=False)

        return [TrainStage("smooth", objective=[{"name": "cross_entropy", "label_smoothing": 0.2}]),
                TrainStage("sharp", objective=[{"name": "cross_entropy"}], init=warm_start,
                           train={"lr": cfg["train"]["lr"] / 10})]


# -- a recipe that builds its datasets past the feature stage (what the runner must catch) -----------------------
@register_recipe("bypass_example")
class BypassExample(Recipe):
    def build_datasets(self, cfg, manifest, fold, labels, features):
        from serkit.data.features import FeatureDataset

        mk = lambda ids, tr: FeatureDataset(features.store, manifest, ids, labels, level="pooled", train=tr)
        return mk(fold.train, True), mk(fold.val, False), mk(fold.test, False)


TEST_RECIPES = {"warm_start_example", "bypass_example"}
SMALL = {"cnn": {"channels": [8]}, "lstm": {"hidden_size": 4, "num_layers": 1},
         "transformer": {"d_model": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 16}}


def _tiny_whisper(path: Path) -> str:
    import torch
    import transformers

    from tests.encoders.tiny import tiny_config as tiny_encoder_config

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        transformers.WhisperForAudioClassification(tiny_encoder_config("whisper")).save_pretrained(str(path))
    return str(path)


def recipe_config(name: str, root: Path, tmp: Path) -> dict:
    """A one-epoch tiny config of recipe ``name`` asking for speaker-normalised features."""
    feats = {"cache_dir": str(root / "cache"), "normalize": "speaker"}
    train = {"epochs": 1, "batch_size": 8, "lr": 0.01, "patience": 5, "progress": False}
    pooled = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    if name == "baseline":
        return {**tiny_config(root, features={**feats, "level": "pooled"}, train=train), "model": pooled}
    if name == "hcld":
        cfg = tiny_config(root, recipe="hcld", features=feats, train=train,
                          objective=[{"name": "cross_entropy"}, {"name": "hcld_speaker_ce"}])
        cfg["model"] = {"name": "hcld", "dim": 8, "extractor_opts": SMALL}
        return cfg
    if name == "mll":
        return {**tiny_config(root, recipe="mll", features=feats, train=train, objective=[{"name": "cross_entropy"}]),
                "model": {"name": "mll", "proj_dim": 8, "pooling": "mean", "embed_dim": 4, "frame_embed_dim": 4}}
    if name == "gmp_atl":
        cfg = tiny_config(root, recipe="gmp_atl", features=feats, train=train,
                          encoder={"id": _tiny_whisper(tmp.parent / "tiny-whisper"), "layers": "all"})
        cfg["model"] = {"name": "gmp_atl"}
        cfg["recipe_options"] = {"stages": [1, 3], "stage1": {"hidden": 4, "proj_dim": 4},
                                 "stage3": {"hidden": 4, "proj_dim": 4, "finetune": "top:1"}}
        return cfg
    if name == "if_mvse":
        cfg = tiny_config(root, recipe="if_mvse", features={**feats, "layers": None}, train=train)
        cfg["encoder"] = [{"id": "fbank-40", "name": "fb40"}, {"id": "fbank-80", "name": "fb80"}]
        cfg["model"] = {"name": "if_mvse", "hidden": [8], "dropout": 0.0, "fuse_dim": 8}
        cfg["recipe_options"] = {"score_sets": [{"name": "S1", "views": ["fb40"]},
                                                {"name": "S2", "views": ["fb40", "fb80"]}]}
        return cfg
    if name in TEST_RECIPES:
        return {**tiny_config(root, recipe=name, features={**feats, "level": "pooled"}, train=train), "model": pooled}
    raise AssertionError(f"recipe {name!r} has no tiny config here: add one (every recipe is tested)")


PRODUCT_RECIPES = ["baseline", "gmp_atl", "hcld", "if_mvse", "mll"]


def test_the_list_below_is_every_registered_recipe():
    assert sorted(set(registered_recipes()) - TEST_RECIPES) == PRODUCT_RECIPES


@pytest.mark.parametrize("name", PRODUCT_RECIPES)
def test_every_recipe_receives_speaker_normalised_features(name, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    """A spy on the normaliser: each recipe's models receive normalised features (or, with an encoder in the loop,
    the statistics), and results.json reports what the feature stage applied."""
    served = []
    original = SpeakerNormalizer.stats_for

    def spy(self, speaker):
        served.append(str(speaker))
        return original(self, speaker)

    monkeypatch.setattr(SpeakerNormalizer, "stats_for", spy)
    res = run_cv(recipe_config(name, tiny_corpus, tmp_path), tmp_path / "run", folds_only=[0], **QUIET)
    assert served and {s for s in served} >= {"spk0", "spk1"}
    assert res["feature_normalisation"].startswith("speaker")
    fold = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    for view in fold["features"].values():
        assert view["normalize"] == "speaker" and set(view["stages"].values()) == {"speaker"}


def test_a_recipe_that_bypasses_the_feature_stage_is_caught(tiny_corpus, tmp_path):  # noqa: F811
    cfg = recipe_config("bypass_example", tiny_corpus, tmp_path)
    with pytest.raises(ConfigError, match="normalize"):
        run_cv(cfg, tmp_path / "bypass", folds_only=[0], **QUIET)
    plain = {**cfg, "features": {**cfg["features"], "normalize": "none"}}
    res = run_cv(plain, tmp_path / "plain", folds_only=[0], **QUIET)
    assert res["feature_normalisation"] == "none"  # what was applied, as the config said


def test_a_recipe_of_hooks_only_runs_through_serkit_cv(tiny_corpus, tmp_path, capsys):  # noqa: F811
    from serkit.cli import main

    cfg = recipe_config("warm_start_example", tiny_corpus, tmp_path)
    cfg["train"]["epochs"] = 3
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["cv", str(path), "--out", str(tmp_path / "ex"), "--folds", "0"]) == 0
    res = json.loads((tmp_path / "ex" / "results.json").read_text())
    fold = res["folds"][0]
    assert set(fold["stage_metrics"]) == {"smooth", "sharp"}
    assert fold["metrics"] == fold["stage_metrics"]["sharp"]["test"]
    assert set(res["stages"]) == {"smooth", "sharp"}
    assert res["mean"]["ua"] > 0.5  # pitch classes are easy


def test_feature_stage_layer_choice_is_one_spelling(tiny_corpus, tmp_path):  # noqa: F811
    spelled_old = tiny_config(tiny_corpus)
    spelled_old["model"] = {**spelled_old["model"], "layers": "weighted"}
    spelled_old["features"] = {k: v for k, v in spelled_old["features"].items() if k != "layers"}
    with pytest.warns(FutureWarning, match="model.layers"):
        old = load_config(spelled_old)
    assert old["features"]["layers"] == "weighted" and "layers" not in old["model"]
    with pytest.warns(FutureWarning, match="train.max_frames"):
        assert load_config({**tiny_config(tiny_corpus), "train": {"max_frames": 40}})["features"]["max_frames"] == 40
    with pytest.raises(ConfigError, match="disagree"):
        load_config({**spelled_old, "features": {"layers": 0}})
    with pytest.raises(ConfigError, match="never used"):
        load_config({**tiny_config(tiny_corpus), "sampler": {"name": "x"}})


def test_every_config_loads_and_declares_valid_stages():
    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(paths) > 20
    for p in paths:
        if p.parent.name == "ablations":
            continue
        cfg = load_config(p)
        recipe = get_recipe(cfg["recipe"])
        recipe.options(cfg)
        assert recipe.stages(cfg), p


@pytest.mark.parametrize("head", ["bilstm", "stats"])
def test_gmp_atl_trains_into_a_model_for_serkit_predict(tiny_corpus, tmp_path, head):  # noqa: F811
    """``serkit train`` runs the stage list on all speakers and saves the last stage's model; ``serkit predict``
    loads it (raw frames of every layer + the enrolled speaker's statistics, normalised inside the model)."""
    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    cfg = recipe_config("gmp_atl", tiny_corpus, tmp_path)
    if head == "stats":  # the baseline's head family; stage 3 starts from stage 1's statistics and class directions
        cfg["recipe_options"]["stage1"].update(head="stats", proj_dim=0)
        cfg["recipe_options"]["stage3"].update(head="stats", proj_dim=0, init_head=True)
    cfg["protocol"] = {"name": "speaker_kfold", "k": 3, "val_speakers": 1}
    model_dir = train_final(cfg, tmp_path / "model", **QUIET)
    rec = Recognizer.from_pretrained(model_dir)
    assert rec.normalize == "speaker" and rec.stats_in_batch
    files = sorted((tiny_corpus / "spk2").glob("*.wav"))
    results = rec.predict_files(files, enroll=files + files)
    assert all("error" not in r for r in results)
    assert {r["label"] for r in results} <= {"low", "mid", "high"}
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in results)


@pytest.mark.parametrize("name", ["baseline", "hcld", "mll"])
def test_single_view_recipes_train_into_a_model_for_serkit_predict(name, tiny_corpus, tmp_path):  # noqa: F811
    """``serkit train CONFIG --out DIR`` then ``serkit predict DIR FILES`` (GMP-ATL and IF-MVSE have their own
    tests); MLL with the feature stage's frame normalisation and pooling, which prediction applies too."""
    import pandas as pd

    from serkit.cli import main

    cfg = recipe_config(name, tiny_corpus, tmp_path)
    if name == "mll":
        cfg["features"].update(frame_norm="layer", pool_frames=2)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "model")]) == 0
    out = tmp_path / "p.csv"
    folder = tiny_corpus / "spk2"
    assert main(["predict", str(tmp_path / "model"), str(folder), "--same-speaker", "--out", str(out),
                 "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == len(list(folder.glob("*.wav"))) and table["error"].isna().all()
    assert set(table["label"]) <= {"low", "mid", "high"}


def test_serkit_ablate_runs_rows_from_a_rows_file(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.cli import main

    cfg = recipe_config("baseline", tiny_corpus, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"rows": {"spk": {"set": []}, "global": {"set": ["features.normalize=none"]}}}))
    assert main(["ablate", str(path), "--out", str(tmp_path / "abl"), "--rows-file", str(rows), "--folds", "0"]) == 0
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| spk |" in md and "| global |" in md
    g = json.loads((tmp_path / "abl" / "global" / "results.json").read_text())
    assert g["feature_normalisation"] == "none"
    assert main(["ablate", str(path), "--out", str(tmp_path / "abl"), "--rows-file", str(rows), "--rows", "nope"]) == 2


def test_ablation_rows_take_named_terms_from_the_config(tmp_path):
    from serkit.ablation.spec import load_rows
    from serkit.errors import ConfigError

    base = {"objective": [{"name": "cross_entropy", "label_smoothing": 0.1}, {"name": "supcon", "temperature": 0.2,
                                                                             "key": "scl"}]}
    rows = tmp_path / "rows.yaml"
    good = {"off": {"set": ["model.dropout=0.0"], "terms": ["cross_entropy"]},
            "add": {"terms": ["scl", {"name": "center", "dim": 4}]}}
    rows.write_text(yaml.safe_dump({"rows": {**good, "bad": {"terms": ["focal"]}}}))
    with pytest.raises(ConfigError, match="'focal'"):
        load_rows(rows, "x", base)
    rows.write_text(yaml.safe_dump({"rows": good}))
    got = load_rows(rows, "x", base)
    assert got["off"][0] == "model.dropout=0.0"
    assert json.loads(got["off"][1].split("=", 1)[1]) == [{"name": "cross_entropy", "label_smoothing": 0.1}]
    assert json.loads(got["add"][0].split("=", 1)[1]) == [{"name": "supcon", "temperature": 0.2, "key": "scl"},
                                                          {"name": "center", "dim": 4}]


@pytest.mark.parametrize("recipe_config_path", ["configs/emodb/hcld.yaml", "configs/emodb/mll.yaml",
                                                "configs/emodb/gmp-atl.yaml", "configs/ravdess/if-mvse.yaml"])
def test_every_recipe_has_ablation_rows_that_resolve(recipe_config_path):
    from pathlib import Path

    from serkit.ablation.spec import load_tables, rows_file
    from serkit.config import load_config

    repo = Path(__file__).resolve().parents[2]
    path = repo / recipe_config_path
    base = load_config(path)
    tables = load_tables(rows_file(path, base["recipe"]), base["recipe"], base)
    assert tables["ablation"].rows
    for table in tables.values():  # every row of every table is a valid config of that recipe
        for row in table.rows:
            cfg = load_config(path, row.overrides)
            assert cfg["recipe"] == base["recipe"], (table.name, row.name)



@pytest.mark.parametrize("name", PRODUCT_RECIPES)
def test_serkit_export_writes_a_graph_for_a_model_of_every_recipe(name, tiny_corpus, tmp_path):  # noqa: F811
    """``serkit train`` then ``serkit export --format onnx`` for each recipe; the export checks onnxruntime against
    torch itself (``serkit.export.TOLERANCE``), and the graph then predicts through ``backend="onnx"``."""
    pytest.importorskip("onnxruntime")
    from serkit.export import export_onnx
    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    cfg = recipe_config(name, tiny_corpus, tmp_path)
    cfg["protocol"] = {"name": "speaker_kfold", "k": 3, "val_speakers": 1}
    model_dir = train_final(cfg, tmp_path / "model", **QUIET)
    graph = export_onnx(model_dir, log=lambda *a: None)
    assert graph.exists() and graph.stat().st_size > 0
    files = sorted((tiny_corpus / "spk2").glob("*.wav"))
    torch_out = Recognizer.from_pretrained(model_dir).predict_files(files, enroll=files + files)
    onnx_out = Recognizer.from_pretrained(model_dir, backend="onnx").predict_files(files, enroll=files + files)
    assert [r["label"] for r in onnx_out] == [r["label"] for r in torch_out]
