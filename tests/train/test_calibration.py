"""Temperature scaling, ECE and the abstain threshold (serkit.calibration), and their way through serkit cv,
serkit train and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serkit.calibration import (
    abstain_threshold,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    softmax,
)


def _overconfident(n=600, classes=4, seed=0):
    """Logits of a model right about 70% of the time but far too sure of itself (scaled by 6)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < 0.7
    logits[np.arange(n), np.where(right, y, (y + 1) % classes)] += 2.0
    return 6.0 * logits, y


def test_temperature_scaling_lowers_ece_of_an_overconfident_model_and_keeps_labels():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t > 2.0  # it found the over-confidence
    before, after = expected_calibration_error(softmax(logits), y), expected_calibration_error(softmax(logits, t), y)
    assert after < before / 2
    assert (softmax(logits, t).argmax(-1) == softmax(logits).argmax(-1)).all()


def test_ece_is_zero_for_perfectly_calibrated_bins_and_large_for_wrong_certainty():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), y) == 0.0
    assert expected_calibration_error(np.array([[0.0, 1.0]] * 2 + [[1.0, 0.0]] * 2), np.array([0, 0, 1, 1])) == 1.0


def test_abstain_threshold_keeps_answers_above_the_target_accuracy():
    rng = np.random.default_rng(1)  # calibrated confidences: right with probability equal to the confidence
    conf = rng.uniform(0.3, 1.0, 800)
    y = rng.integers(0, 2, 800)
    pred = np.where(rng.random(800) < conf, y, 1 - y)
    p = np.where(pred[:, None] == np.arange(2), conf[:, None], 1 - conf[:, None])
    t = abstain_threshold(p, y, 0.9)
    kept = p.max(-1) >= t
    assert 0 < kept.mean() < 1 and (p.argmax(-1) == y)[kept].mean() >= 0.9
    assert abstain_threshold(np.eye(3), np.arange(3), 0.9) == 0.0  # always right: never abstain


def test_calibration_record_reports_before_and_after_on_validation_and_test():
    (lv, yv), (lt, yt) = _overconfident(seed=2), _overconfident(seed=3)
    rec = calibration_record({"logits": lv}, yv, {"logits": lt}, yt)
    assert rec["ece_val_after"] < rec["ece_val_before"] and rec["ece_test_after"] < rec["ece_test_before"]
    probs = calibration_record({"probs": softmax(lv)}, yv)  # a model that outputs probabilities
    assert probs["temperature"] == pytest.approx(rec["temperature"], rel=0.05)  # up to log(p) clipped at 1e-12


def test_cv_reports_the_track_and_calibration_per_fold(tiny_corpus, tmp_path):
    from serkit.train.cv import run_cv
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"}, train={"epochs": 2})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    res = run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert res["test_speaker_statistics"] is False
    cal = res["folds"][0]["calibration"]
    assert cal["temperature"] > 0 and {"ece_val_before", "ece_val_after", "abstain_threshold"} <= set(cal)
    assert cal["ece_val_after"] <= cal["ece_val_before"] + 1e-9  # the NLL optimum, on the same utterances
    assert "track: **single clip**" in (tmp_path / "run" / "report.md").read_text()
    spk = {**cfg, "features": {**cfg["features"], "normalize": "speaker"}}
    assert run_cv(spk, tmp_path / "spk", folds_only=[0], log=lambda *a: None)["test_speaker_statistics"] is True


def test_a_trained_model_applies_its_temperature_and_can_abstain(tiny_corpus, tmp_path):
    import torch

    from serkit.inference import Recognizer
    from serkit.train.final import train_final
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"}, train={"epochs": 2})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    model = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    meta = json.loads((model / "meta.json").read_text())
    cal = meta["calibration"]["global"]
    assert cal["temperature"] > 0 and 0 <= cal["abstain_threshold"] <= 1
    rec = Recognizer.from_pretrained(model)
    clip = tiny_corpus / "spk0" / "high_0.wav"
    seen = []
    forward = rec.model.forward
    def spy(batch):
        out = forward(batch)
        seen.append(out["logits"].clone())
        return out

    rec.model.forward = spy
    got = rec.predict(clip)
    want = torch.softmax(seen[0][0] / cal["temperature"], -1).numpy()
    np.testing.assert_allclose(list(got["probabilities"].values()), want, atol=1e-4)
    rec.calibration["global"]["abstain_threshold"] = 1.01  # nothing is that sure
    assert rec.predict(clip, abstain=True)["label"] == "unknown"
    rec.calibration["global"]["abstain_threshold"] = 0.0
    assert rec.predict(clip, abstain=True)["label"] == got["label"]


def test_calibration_reads_the_validation_outputs_of_the_model_before_its_refit(tiny_corpus, tmp_path, monkeypatch):
    """With train.refit the refit trains on the validation utterances: the temperature and the validation ECE come
    from the selected model's outputs on them, computed before the refit starts."""
    from serkit.train import fit, scoring
    from serkit.train.cv import run_cv
    from tests.train.conftest import tiny_config

    events = []
    train_module, predict_outputs = fit.train_module, scoring.predict_outputs

    def spy_train(cfg, manifest, fold, source, fold_dir, *a, **k):
        events.append(("refit" if fold_dir.name == "refit" else "train", None))
        return train_module(cfg, manifest, fold, source, fold_dir, *a, **k)

    def spy_predict(module, loader, *a, **k):
        events.append(("predict", len(loader.dataset)))
        return predict_outputs(module, loader, *a, **k)

    monkeypatch.setattr(fit, "train_module", spy_train)
    monkeypatch.setattr(fit, "predict_outputs", spy_predict)
    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"}, train={"epochs": 2, "refit": True})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    res = run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    n_val = res["folds"][0]["n_val"]
    refit_at = events.index(("refit", None))
    assert ("predict", n_val) in events[:refit_at]  # validation scored by the selected model, before the refit
    assert [e for e in events[refit_at:] if e[0] == "predict"] == [("predict", res["folds"][0]["n_test"])]
