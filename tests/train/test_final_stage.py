"""``train.final_stage``: which finished stage of a multi-stage recipe is the fold's result and the saved model."""

import json
from types import SimpleNamespace

import pytest

from serkit.errors import ConfigError
from serkit.train.stages import chosen_stage
from tests.train.conftest import tiny_corpus  # noqa: F401
from tests.train.test_runner import QUIET, recipe_config


def _ctx(rule: str, vals: dict) -> SimpleNamespace:
    results = {n: SimpleNamespace(marker={"best_val": v}) for n, v in vals.items()}
    return SimpleNamespace(cfg={"train": {"final_stage": rule}}, results=results)


def test_chosen_stage_rules():
    names = ["stage1", "stage3"]
    assert chosen_stage(_ctx("last", {"stage1": 0.9, "stage3": 0.5}), names) == "stage3"
    assert chosen_stage(_ctx("best_val", {"stage1": 0.9, "stage3": 0.5}), names) == "stage1"
    assert chosen_stage(_ctx("best_val", {"stage1": 0.5, "stage3": 0.9}), names) == "stage3"
    # ties keep the later stage (the method's full pipeline); a stage without a validation score never wins
    assert chosen_stage(_ctx("best_val", {"stage1": 0.7, "stage3": 0.7}), names) == "stage3"
    assert chosen_stage(_ctx("best_val", {"stage1": 0.7, "stage3": None}), names) == "stage1"
    assert chosen_stage(_ctx("best_val", {"stage1": float("nan"), "stage3": 0.1}), names) == "stage3"


def test_final_stage_value_checked():
    from serkit.config import load_config

    with pytest.raises(ConfigError, match="final_stage"):
        load_config({"name": "x", "corpus": "csv", "root": "t.csv", "train": {"final_stage": "best"}})


def _gmp(tiny_corpus, tmp_path):  # noqa: F811
    cfg = recipe_config("gmp_atl", tiny_corpus, tmp_path)
    cfg["recipe_options"]["stage1"].update(head="stats", proj_dim=0, train={"epochs": 4, "lr": 0.02})
    # stage 3 starts from a fresh head and does not learn (lr 0): validation must keep stage 1
    cfg["recipe_options"]["stage3"].update(head="stats", proj_dim=0, init_head=False, train={"epochs": 1, "lr": 0.0})
    cfg["train"]["final_stage"] = "best_val"
    cfg["recipe_options"]["stage_root"] = str(tmp_path / "stages")
    return cfg


def test_cv_keeps_the_stage_validation_prefers(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    cfg = _gmp(tiny_corpus, tmp_path)
    summary = run_cv(cfg, tmp_path / "run", folds_only=[0], **QUIET)
    res = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    vals = {n: json.loads((p / "stage.json").read_text())["best_val"]
            for n, p in ((p.name.split("-")[0], p) for p in (tmp_path / "stages" / "fold0").glob("stage*-*"))}
    assert vals["stage1"] > vals["stage3"]
    assert res["final_stage"] == "stage1" and summary["final_stage"] == {"rule": "best_val", "per_fold": ["stage1"]}
    assert res["metrics"]["ua"] == pytest.approx(res["stage_metrics"]["stage1"]["test"]["ua"])
    assert res["best_val"] == vals["stage1"]
    # the rule changes no stage's training: the default rule reuses both stages (nothing retrained) and reports stage 3
    before = {p: p.stat().st_mtime for p in (tmp_path / "stages").rglob("state.safetensors")}
    cfg["train"]["final_stage"] = "last"
    last = run_cv(cfg, tmp_path / "run-last", folds_only=[0], **QUIET)
    assert {p: p.stat().st_mtime for p in (tmp_path / "stages").rglob("state.safetensors")} == before
    assert last["folds"][0]["metrics"]["ua"] == pytest.approx(res["stage_metrics"]["stage3"]["test"]["ua"])
    assert last["final_stage"]["per_fold"] == ["stage3"]


def test_train_saves_and_predict_rebuilds_the_kept_stage(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    cfg = _gmp(tiny_corpus, tmp_path)
    model_dir = train_final(cfg, tmp_path / "model", **QUIET)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert json.dumps(meta).count('"final_stage": "stage1"') >= 1
    rec = Recognizer.from_pretrained(model_dir)
    assert rec.model.stage == 1
    files = sorted((tiny_corpus / "spk2").glob("*.wav"))
    results = rec.predict_files(files, enroll=files + files)
    assert all("error" not in r for r in results)
    assert sum(r["label"] == f.name.split("_")[0] for r, f in zip(results, files, strict=True)) > len(files) / 3
