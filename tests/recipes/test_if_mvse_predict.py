"""IF-MVSE through `serkit train` and `serkit predict`: the saved score sets, view inputs and weights replay the
stage list; a prediction equals the weighted combination computed by hand from the saved files and the training
cache's features of the clip (classification with the speaker and global heads; regression)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from serkit.cli import main
from serkit.config import load_config
from tests.recipes.test_if_mvse import SETS, _cfg
from tests.train.conftest import tiny_corpus  # noqa: F401


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def cls_model(tiny_corpus, tmp_path_factory):  # noqa: F811
    """Speaker-normalised classification: a speaker head and a global head, each a stage list."""
    from serkit.train.final import train_final

    cfg = _cfg(tiny_corpus, task="classification",
               features={"cache_dir": str(tiny_corpus / "cache"), "normalize": "speaker"})
    cfg["encoder"][1]["features"] = {"layers": 0}  # a per-view layer choice
    return cfg, train_final(cfg, tmp_path_factory.mktemp("mvse-cls") / "model", log=quiet)


@pytest.fixture(scope="module")
def reg_model(tiny_corpus, tmp_path_factory):  # noqa: F811
    from serkit.train.final import train_final

    cfg = _cfg(tiny_corpus)  # regression (arousal, valence), global features
    return cfg, train_final(cfg, tmp_path_factory.mktemp("mvse-reg") / "model", log=quiet)


def _stores(cfg, root):
    from serkit.train.cv import feature_source
    from serkit.train.experiment import load_experiment_manifest

    cfg = load_config(cfg)
    manifest = load_experiment_manifest(cfg)
    return manifest, feature_source(cfg, manifest, root, log=quiet)


def _by_hand(model_dir, head: str, pooled: dict, stats: dict | None = None) -> np.ndarray:
    """The combination from the saved files: each view's input from its pooled statistics, each score set's own
    model loaded from its slice of the weights file, the weighted sum of the sets' probabilities or predictions."""
    from serkit.data.normalize import normalize_pooled
    from serkit.models.fusion import ScoreSetModel

    meta = json.loads((model_dir / "meta.json").read_text())
    desc = meta["head_extra"][head]["ensemble"]
    state = load_file(str(model_dir / meta["heads"][head]))
    task, n_out = meta["spec"]["task"], meta["spec"]["num_outputs"]
    x = {}
    for i, v in enumerate(desc["views"]):
        p = pooled[v["name"]]
        if v["normalize"] == "speaker":
            p = normalize_pooled(p, *stats[v["name"]])
        if v["layers"] is not None:
            p = p[v["layers"]]
        if v["pooling"] == "mean":
            p = p[..., : p.shape[-1] // 2]
        p = torch.from_numpy(np.asarray(p, np.float32).reshape(1, -1))
        x[v["name"]] = (p - state[f"views.{i}.mean"]) / state[f"views.{i}.std"]
    total = 0.0
    for i, (s, w) in enumerate(zip(desc["score_sets"], desc["weights"], strict=True)):
        m = ScoreSetModel({n: x[n].shape[1] for n in s["views"]}, s, task, n_out, **desc["model"]).eval()
        m.load_state_dict({k[len(f"sets.{i}."):]: t for k, t in state.items() if k.startswith(f"sets.{i}.")})
        with torch.no_grad():
            out = m({"views": {n: x[n] for n in s["views"]}})
        score = torch.softmax(out["logits"], -1) if task == "classification" else out["prediction"]
        total = total + w * score[0].numpy()
    return total / sum(desc["weights"]) if task == "classification" else total


def test_classification_predict_is_the_saved_combination(cls_model, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    from serkit import Recognizer
    from serkit.data.normalize import frame_stats

    cfg, d = cls_model
    meta = json.loads((d / "meta.json").read_text())
    assert set(meta["heads"]) == {"speaker", "global"} and meta["refit"] is False
    enc = json.loads((d / "encoder.json").read_text())
    assert {v["encoder"] for v in enc["views"].values()} == {"fbank-40", "fbank-80"}
    desc = meta["head_extra"]["speaker"]["ensemble"]
    assert [s["name"] for s in desc["score_sets"]] == ["S1", "S2", "S3"] and len(desc["weights"]) == 3
    assert {v["name"]: v["normalize"] for v in desc["views"]} == {"fb40": "speaker", "fb80": "speaker"}
    assert {v["name"]: v["normalize"] for v in meta["head_extra"]["global"]["ensemble"]["views"]} == \
        {"fb40": "none", "fb80": "none"}
    val = json.loads((d / "validation.json").read_text())["heads"]["speaker"]
    assert val["steps"]["combine"]["weights"] == dict(zip(["S1", "S2", "S3"], desc["weights"], strict=True))
    assert not any(p.suffix in (".pt", ".pkl", ".ckpt") for p in d.rglob("*"))

    manifest, stores = _stores(cfg, tmp_path)
    uid = "spk2_high_1"
    clip = manifest.set_index("id").loc[uid, "path"]
    pooled = {v: s.pooled(uid) for v, s in stores.items()}
    rec = Recognizer.from_pretrained(d, device="cpu")
    r = rec.predict(clip)  # one clip of an unknown speaker: the global head
    assert r["head"] == "global"
    from serkit.calibration import softmax

    # the saved combination's probabilities, scaled by the head's temperature (fitted on validation at training)
    hand = softmax(np.log(np.clip(_by_hand(d, "global", pooled), 1e-12, 1)), rec.temperature("global"))
    got = np.array([r["probabilities"][c] for c in rec.labels.classes])
    np.testing.assert_allclose(got, hand, atol=2e-4)
    assert r["label"] == rec.labels.classes[int(np.argmax(hand))]

    # the speaker head with the speaker's statistics per view (as the feature stage computes them)
    ids = manifest.loc[manifest["speaker"] == "spk2", "id"].tolist()
    stats = {v: frame_stats(np.stack([s.pooled(u) for u in ids]), [s.entry(u)["frames"] for u in ids])
             for v, s in stores.items()}
    r = rec.predict(clip, enroll=stats)
    assert r["head"] == "speaker"
    raw = _by_hand(d, "speaker", pooled, stats)
    hand = softmax(np.log(np.clip(raw, 1e-12, 1)), rec.temperature("speaker"))
    np.testing.assert_allclose([r["probabilities"][c] for c in rec.labels.classes], hand, atol=2e-4)
    assert not np.allclose(raw, _by_hand(d, "global", pooled))  # the heads differ: the check can fail
    # several files of one speaker (about 6 s here): the statistics come from their encoded windows, per view
    monkeypatch.setattr(rec, "min_enroll_seconds", 3.0)
    files = [manifest.set_index("id").loc[u, "path"] for u in ids]
    rs = rec.predict_files(files, same_speaker=True)
    assert {x["head"] for x in rs} == {"speaker"}
    i = files.index(clip)
    np.testing.assert_allclose([rs[i]["probabilities"][c] for c in rec.labels.classes], hand, atol=2e-3)


def test_regression_predict_is_the_saved_combination(reg_model, tmp_path):
    from serkit import Recognizer

    cfg, d = reg_model
    meta = json.loads((d / "meta.json").read_text())
    assert list(meta["heads"]) == ["global"]
    manifest, stores = _stores(cfg, tmp_path)
    rec = Recognizer.from_pretrained(d, device="cpu")
    for uid in ("spk0_low_0", "spk4_mid_3"):
        clip = manifest.set_index("id").loc[uid, "path"]
        r = rec.predict(clip)
        hand = _by_hand(d, "global", {v: s.pooled(uid) for v, s in stores.items()})
        np.testing.assert_allclose([r["values"][a] for a in ("arousal", "valence")], hand, atol=2e-4)
    desc = meta["head_extra"]["global"]["ensemble"]
    assert any(w > 0 for w in desc["weights"]) and len(desc["score_sets"]) == len(SETS)


def test_info_card_predict_cli_and_onnx_export(reg_model, tiny_corpus, capsys):  # noqa: F811
    _, d = reg_model
    card = (d / "README.md").read_text()
    assert "fbank-40" in card and "fbank-80" in card and "S2 (fb40 + fb80)" in card
    assert "nothing is refit on all speakers" in card
    assert main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "views:" in out and "fb40 = fbank-40" in out and "weights (global head)" in out
    clip = str(tiny_corpus / "spk1" / "low_2.wav")
    assert main(["predict", str(d), clip, "--format", "json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "arousal" in out
    torch_json = json.loads(out)
    assert main(["export", str(d), "--format", "onnx"]) == 0
    capsys.readouterr()
    assert main(["predict", str(d), clip, "--format", "json", "--no-progress", "--backend", "onnx"]) == 0
    onnx_json = json.loads(capsys.readouterr().out)
    for target in ("arousal", "valence"):  # printed to 4 decimals
        assert abs(onnx_json[0]["values"][target] - torch_json[0]["values"][target]) < 1e-3 + 1e-4
