import json

import numpy as np
import pandas as pd
import pytest

from serkit.errors import ConfigError, LeakageError
from serkit.protocols import Fold
from serkit.train.cv import run_cv
from serkit.train.module import SERModule
from tests.train.conftest import tiny_config


def test_cv_writes_results_schema_and_report(tiny_corpus, tmp_path):
    summary = run_cv(tiny_config(tiny_corpus), tmp_path / "run", log=lambda *a: None)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["task"] == "classification" and res["speaker_independent"] is True
    assert res["protocol"]["name"] == "speaker_kfold" and len(res["folds"]) == 3
    for f in res["folds"]:
        assert set(f) >= {"fold", "test_speakers", "n_test", "metrics"}
        assert len(f["test_speakers"]) == 2 and f["n_test"] == 24
        assert {"wa", "ua", "macro_f1", "recall_low", "recall_mid", "recall_high"} <= set(f["metrics"])
        assert 0 <= f["metrics"]["ua"] <= 1
    assert {"wa", "ua", "macro_f1"} <= set(res["mean"]) and {"wa", "ua"} <= set(res["std"])
    assert res["mean"]["ua"] == pytest.approx(np.mean([f["metrics"]["ua"] for f in res["folds"]]))
    assert res["mean"]["ua"] > 0.6, "pitch classes are easy: a working trainer learns them"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "speaker-independent" in report and "confusion.png" in report
    assert (tmp_path / "run" / "figures" / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "run" / "figures" / "learning_curves.png").exists()
    assert summary["mean"] == res["mean"]
    # per-utterance predictions name the predicted class `label`, as `serkit predict` does
    pred = pd.read_csv(tmp_path / "run" / "fold0" / "predictions.csv")
    assert {"true", "label", "p_low"} <= set(pred.columns) and "pred" not in pred.columns
    assert set(pred["label"]) <= {"low", "mid", "high"}
    # each fold records what it cost; a resumed invocation (nothing left to train) keeps those figures
    fold_secs = [json.loads((tmp_path / "run" / f"fold{i}" / "result.json").read_text())["seconds"] for i in range(3)]
    assert all(s > 0 for s in fold_secs) and res["fold_seconds"] == pytest.approx(sum(fold_secs), abs=0.2)
    again = run_cv(tiny_config(tiny_corpus), tmp_path / "run", log=lambda *a: None)
    assert again["fold_seconds"] == res["fold_seconds"] and again["wall_seconds"] < res["wall_seconds"]
    assert res["augmentation"] == "none"
    # what ran: precision and torch's CPU thread count (another thread count rounds CPU sums differently)
    import torch

    assert res["threads"] == [torch.get_num_threads()] and all(f["threads"] == res["threads"][0] for f in res["folds"])
    assert f"torch CPU threads {torch.get_num_threads()}" in report and "training 32-true" in report


def test_regression_cv(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, task="regression", targets=["arousal", "valence"], objective=[{"name": "ccc"}],
                      train={"epochs": 6})
    res = run_cv(cfg, tmp_path / "reg", log=lambda *a: None)
    assert res["task"] == "regression"
    for k in ("ccc_arousal", "ccc_valence", "pearson_arousal", "mae_valence", "ccc_mean"):
        assert k in res["mean"] and k in res["folds"][0]["metrics"]
    assert res["mean"]["ccc_arousal"] > 0.3


def test_killed_run_resumes_to_identical_results(tiny_corpus, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_corpus)
    reference = run_cv(cfg, tmp_path / "ref", log=lambda *a: None)

    original = SERModule.on_train_epoch_end if hasattr(SERModule, "on_train_epoch_end") else None
    state = {"fired": False}

    def crash(self):
        if self.current_epoch == 2 and not state["fired"] and "fold1" in str(self.trainer.default_root_dir) + str(
                self.trainer.log_dir):
            state["fired"] = True
            raise KeyboardInterrupt("simulated kill")
        if original:
            original(self)

    monkeypatch.setattr(SERModule, "on_train_epoch_end", crash)
    with pytest.raises((KeyboardInterrupt, SystemExit, Exception)):
        run_cv(cfg, tmp_path / "killed", log=lambda *a: None)
    assert state["fired"]
    assert (tmp_path / "killed" / "fold0" / "result.json").exists()
    assert not (tmp_path / "killed" / "fold1" / "result.json").exists()
    assert (tmp_path / "killed" / "fold1" / "checkpoints" / "last.ckpt").exists()
    monkeypatch.undo()
    resumed = run_cv(cfg, tmp_path / "killed", log=lambda *a: None)
    for a, b in zip(reference["folds"], resumed["folds"], strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"])
    ref_pred = (tmp_path / "ref" / "fold1" / "predictions.csv").read_text()
    res_pred = (tmp_path / "killed" / "fold1" / "predictions.csv").read_text()
    assert ref_pred == res_pred
    from serkit.train.logs import read_fold_metrics

    curve = read_fold_metrics(tmp_path / "killed" / "fold1")
    ref_curve = read_fold_metrics(tmp_path / "ref" / "fold1")
    assert sorted(curve["epoch"].unique()) == sorted(ref_curve["epoch"].unique()) == [0, 1, 2, 3]
    assert curve.dropna(subset=["val_ua"])["val_ua"].tolist() == pytest.approx(
        ref_curve.dropna(subset=["val_ua"])["val_ua"].tolist())


def test_leaky_fold_is_refused(tiny_corpus, tmp_path):
    from serkit.train.experiment import load_experiment_manifest
    from serkit.train.fit import fit_fold

    cfg = __import__("serkit.config", fromlist=["load_config"]).load_config(tiny_config(tiny_corpus))
    m = load_experiment_manifest(cfg)
    ids = m["id"].tolist()
    leaky = Fold(0, "speaker_kfold", True, ids[:60], ids[60:66], ids[66:])  # spk2's items split across parts
    with pytest.raises(LeakageError):
        fit_fold(cfg, m, leaky, None, tmp_path / "leak")


def test_waveform_source_runs_encoder_in_the_loop(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, features={"source": "waveform"}, train={"epochs": 2})
    res = run_cv(cfg, tmp_path / "wave", folds_only=[0], log=lambda *a: None)
    assert len(res["folds"]) == 1 and 0 <= res["folds"][0]["metrics"]["ua"] <= 1
    assert not (tmp_path / "wave" / "fold1").exists()


def test_refit_on_train_and_validation_uses_the_validated_epoch_count(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, train={"epochs": 3, "refit": True})
    res = run_cv(cfg, tmp_path / "refit", folds_only=[0], log=lambda *a: None)
    fold = json.loads((tmp_path / "refit" / "fold0" / "result.json").read_text())
    assert fold["refit_epochs"] == fold["best_epoch"] + 1
    from serkit.train.logs import read_fold_metrics

    refit_log = read_fold_metrics(tmp_path / "refit" / "fold0" / "refit")
    assert refit_log["epoch"].max() == fold["refit_epochs"] - 1
    assert 0 <= res["mean"]["ua"] <= 1


def test_speaker_normalisation_is_recorded_also_for_the_encoder_in_the_loop(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "normalize": "speaker"})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    cfg["features"]["layers"] = "all"
    res = run_cv(cfg, tmp_path / "spk", log=lambda *a: None)
    assert res["feature_normalisation"].startswith("speaker") and res["mean"]["ua"] > 0.6
    assert "feature normalisation" in (tmp_path / "spk" / "report.md").read_text()
    plain = run_cv(tiny_config(tiny_corpus), tmp_path / "plain", log=lambda *a: None)
    assert plain["feature_normalisation"] == "none"
    # an encoder in the loop: its outputs are normalised with the speaker statistics of the cache
    wave = tiny_config(tiny_corpus, features={"source": "waveform", "normalize": "speaker"}, train={"epochs": 1})
    res = run_cv(wave, tmp_path / "wave", folds_only=[0], log=lambda *a: None)
    assert res["feature_normalisation"].startswith("speaker")


def test_a_run_saved_before_a_new_default_still_resumes(tiny_corpus, tmp_path):
    import yaml

    from serkit.config import dump, load_config

    raw = tiny_config(tiny_corpus, train={"epochs": 1})
    cfg = load_config(raw)
    out = tmp_path / "old"
    out.mkdir()
    saved = yaml.safe_load(dump(cfg))
    # as written by a version without these options (features.normalize's default now depends on the corpus:
    # auto for csv tables, so an old csv run that never named it would now mean something else)
    del saved["features"]["speaker_min_utterances"], saved["train"]["select"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    run_cv(raw, out, log=lambda *a: None)  # same settings: resumes instead of refusing
    changed = tiny_config(tiny_corpus, train={"epochs": 2})
    with pytest.raises(ConfigError, match="different config"):
        run_cv(changed, out, log=lambda *a: None)


def test_augmentation_mode_is_stated():
    from serkit.train.cv import describe_augmentation

    cache = {"features": {"source": "cache"}}
    assert describe_augmentation({**cache, "augment": None}) == "none"
    assert describe_augmentation({**cache, "augment": {"name": "none"}}) == "none"
    v = describe_augmentation({**cache, "augment": {"name": "eam", "mode": "auto", "k": 4}})
    assert v.startswith("eam, mode variants") and "K=4" in v
    live = describe_augmentation({"features": {"source": "waveform"}, "augment": {"name": "eam"}})
    assert "on_the_fly" in live and "encoder in the loop" in live


def test_fused_optimizer_trains_in_bf16_with_gradient_clipping(tiny_corpus, tmp_path, monkeypatch):
    """``train.fused_optimizer``: PyTorch's fused Adam/AdamW; Lightning would refuse to clip its gradients, so the
    module clips them by norm itself (no gradient scaler in bf16 / fp32)."""
    import torch

    seen = {"fused": [], "clipped": 0}
    configure = SERModule.configure_optimizers

    def spy_configure(self):
        out = configure(self)
        opt = out["optimizer"] if isinstance(out, dict) else out
        seen["fused"].append(bool(opt.defaults.get("fused")))
        return out

    clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *a, **k):
        seen["clipped"] += 1
        return clip(params, max_norm, *a, **k)

    monkeypatch.setattr(SERModule, "configure_optimizers", spy_configure)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    cfg = tiny_config(tiny_corpus)
    cfg["train"].update(fused_optimizer=True, precision="bf16", grad_clip=1.0)
    res = run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert seen["fused"] and all(seen["fused"]) and seen["clipped"] > 0
    assert res["folds"][0]["metrics"]["ua"] > 0.6


def test_training_only_corpus_trains_every_fold_and_is_never_scored(tiny_corpus, tmp_path):
    """Speakers 4 and 5 as another corpus in protocol.training_only: the folds and test speakers are the first
    corpus's, every fold trains also on the other corpus, and no prediction is made for it."""
    from serkit.corpora import prepare

    table = prepare("csv", str(tiny_corpus / "table.csv"))
    table["corpus"] = np.where(table["speaker"].isin(["spk4", "spk5"]), "extra", "main")
    path = tmp_path / "two.csv"
    table.to_csv(path, index=False)
    cfg = tiny_config(tiny_corpus, protocol={"name": "speaker_kfold", "k": 2, "val_speakers": 1,
                                             "training_only": ["extra"]})
    cfg.update(corpus=None, root=None, manifest=str(path))  # a prepared table keeps its corpus column
    run_cv(cfg, tmp_path / "run", log=lambda *a: None)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    extra = set(table.loc[table["corpus"] == "extra", "id"])
    assert sorted(s for f in res["folds"] for s in f["test_speakers"]) == ["spk0", "spk1", "spk2", "spk3"]
    for i, f in enumerate(json.loads((tmp_path / "run" / "folds.json").read_text())):
        assert extra <= set(f["train"]) and not extra & set(f["val"] + f["test"])
        scored = set(pd.read_csv(tmp_path / "run" / f"fold{i}" / "predictions.csv")["id"])
        assert scored == set(f["test"]) and not scored & extra
