import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serkit.cli import main
from serkit.errors import SerkitError
from serkit.inference import MIN_ENROLL_SECONDS, Recognizer
from serkit.train.final import train_final
from tests.train.conftest import tiny_config


def _label(path) -> str:
    return path.stem.split("_")[0]


def test_model_folder_has_both_heads_validation_and_a_card(spk_model):
    names = {p.name for p in spk_model.iterdir()}
    assert {"config.yaml", "model.safetensors", "model-global.safetensors", "labels.json", "encoder.json",
            "meta.json", "validation.json", "README.md"} <= names
    assert "work" not in names  # checkpoints are not shipped
    meta = json.loads((spk_model / "meta.json").read_text())
    assert meta["heads"] == {"speaker": "model.safetensors", "global": "model-global.safetensors"}
    assert meta["refit"] and meta["n_train"] == 72 and meta["n_speakers"] == 6  # refit on every speaker
    val = json.loads((spk_model / "validation.json").read_text())
    for head in ("speaker", "global"):
        v = val["heads"][head]
        assert v["n_val"] == 12 and len(v["val_speakers"]) == 1 and v["curve"]
        assert v["refit_epochs"] == v["best_epoch"] + 1
        assert v["best_val"] == max(r["val_ua"] for r in v["curve"])
    card = (spk_model / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: serkit")
    for text in ("high, low, mid", "72 utterances of 6 speakers", "global head", "--enroll", "Intended use"):
        assert text in card


def test_a_single_clip_gets_the_global_head_and_enrolment_the_speaker_head(tiny_corpus, spk_model):
    rec = Recognizer.from_pretrained(spk_model, device="cpu")
    assert set(rec.heads) == {"speaker", "global"}
    clip = tiny_corpus / "spk2" / "high_0.wav"
    r = rec.predict(clip)
    assert r["head"] == "global" and r["label"] in ("low", "mid", "high")
    assert abs(sum(r["probabilities"].values()) - 1) < 1e-3
    files = sorted((tiny_corpus / "spk2").glob("*.wav"))  # 12 clips, about 6.6 s
    # one speaker's files enrolled with a second copy of them reach the minimum: the speaker head answers
    results = rec.predict_files(files, enroll=files + files)
    assert {r["head"] for r in results} == {"speaker"}
    assert sum(r["label"] == _label(f) for r, f in zip(results, files, strict=True)) >= 8
    # the files alone, declared one speaker, are too short: the global head answers and says why
    alone = rec.predict_files(files, same_speaker=True)
    assert {r["head"] for r in alone} == {"global"} and "needs at least" in alone[0]["note"]
    # explicit enrolment that is too short is the user's error
    with pytest.raises(SerkitError, match="at least 10 s"):
        rec.predict(clip, enroll=files[:2])


def test_speaker_statistics_come_from_the_scored_windows_each_encoded_once(tiny_corpus, spk_model, tmp_path,
                                                                            monkeypatch):
    from serkit.encoders import runner

    rec = Recognizer.from_pretrained(spk_model, device="cpu", batch_size=4)
    clips = [sf.read(str(p))[0] for p in sorted((tiny_corpus / "spk3").glob("*.wav"))]
    long = tmp_path / "spk3-long.wav"
    sf.write(str(long), np.concatenate(clips * 2), 16000)  # about 13 s: windows of 1 s, hop 0.5 s
    encoded = []
    real = runner.encode_signals

    def counting(encoder, items, layers, **kw):
        def seen():
            for key, x in items:
                encoded.append(len(x))
                yield key, x
        return real(encoder, seen(), layers, **kw)

    monkeypatch.setattr(runner, "encode_signals", counting)
    (r,) = rec.predict_files([long], same_speaker=True)
    assert r["head"] == "speaker" and r["duration"] >= MIN_ENROLL_SECONDS
    assert len(encoded) == len(r["windows"])  # each window once: statistics and scores share the features
    # every sample counts once in the statistics, though the windows overlap
    windows = rec._windows(int(r["duration"] * 16000))
    owned = rec._owned(windows)
    assert sum(b - a for a, b in owned) == windows[-1][1]
    assert all(0 <= a < b <= e - s for (a, b), (s, e) in zip(owned, windows, strict=True))


def test_batch_size_does_not_change_the_answer(tiny_corpus, spk_model):
    files = sorted((tiny_corpus / "spk4").glob("*.wav"))
    one = Recognizer.from_pretrained(spk_model, device="cpu", batch_size=1).predict_files(files)
    many = Recognizer.from_pretrained(spk_model, device="cpu", batch_size=16).predict_files(files)
    for a, b in zip(one, many, strict=True):
        assert a["label"] == b["label"]
        assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) < 1e-3


def test_long_file_windows_and_array_input(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus, predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    model_dir = train_final(cfg, tmp_path / "model", refit=False, log=lambda *a: None)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["heads"] == {"global": "model.safetensors"} and not meta["refit"] and meta["n_train"] == 60
    rec = Recognizer.from_pretrained(model_dir)
    short = tiny_corpus / "spk0" / "high_0.wav"
    r = rec.predict(short)
    assert r["windows"] == [] and r["head"] == "global"
    clips = [sf.read(str(tiny_corpus / "spk1" / f"{e}_3.wav"))[0] for e in ("low", "high", "low", "high")]
    long = tmp_path / "long.wav"
    sf.write(str(long), np.concatenate(clips * 2), 16000)
    r = rec.predict(long)
    assert r["duration"] > 4 and len(r["windows"]) >= 6
    assert all(w["end"] - w["start"] <= 1.0 + 1e-6 for w in r["windows"])
    x, _ = sf.read(str(short))
    assert rec.predict(np.repeat(x, 2), sample_rate=32000)["label"] in ("low", "mid", "high")


def test_cli_folders_globs_manifests_out_files_and_exit_status(tiny_corpus, spk_model, tmp_path, capsys):
    folder = tiny_corpus / "spk5"
    n = len(list(folder.glob("*.wav")))
    out = tmp_path / "p.csv"
    assert main(["predict", str(spk_model), str(folder), "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == n and set(table["file"]) == {str(p) for p in folder.glob("*.wav")}
    assert set(table["head"]) == {"global"} and table["error"].isna().all()
    # a glob, a manifest and a missing file: every input has a row, and the failure makes the exit status 1
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(folder / "low_0.wav"), "missing.wav"], "id": ["a", "b"]}).to_csv(manifest, index=False)
    jl = tmp_path / "p.jsonl"
    capsys.readouterr()
    rc = main(["predict", str(spk_model), str(tiny_corpus / "spk0" / "mid_*.wav"), str(manifest),
               str(tmp_path / "nope.wav"), "--out", str(jl), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    rows = [json.loads(line) for line in jl.read_text().splitlines()]
    assert len(rows) == 4 + 2 + 1
    assert "2 of 7 input(s) failed" in err and "nope.wav: file not found" in err and "missing.wav" in err
    assert {r["id"] for r in rows if "id" in r} == {"a", "b"}
    # --same-speaker on enough audio (two folders, about 13 s, taken as one speaker): the speaker head
    files = [str(folder), str(tiny_corpus / "spk4")]
    assert main(["predict", str(spk_model), *files, "--same-speaker", "--format", "csv", "--no-progress"]) == 0
    assert set(pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))["head"]) == {"speaker"}


def test_cli_bad_device_model_and_version(spk_model, tiny_corpus, tmp_path, capsys):
    clip = str(tiny_corpus / "spk0" / "high_0.wav")
    if not __import__("torch").cuda.is_available():
        assert main(["predict", str(spk_model), clip, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("serkit predict: error: device 'cuda' is not available") and "\n" not in err
    assert main(["predict", str(spk_model), clip, "--device", "tpu9"]) == 2
    assert "unknown" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("name: half a model\n")
    assert main(["predict", str(tmp_path), clip]) == 2
    assert "not a serkit model folder" in capsys.readouterr().err
    assert main(["info", str(spk_model)]) == 0
    out = capsys.readouterr().out
    assert "classification: high, low, mid" in out and "heads:     speaker, global" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("serkit ")


def test_train_refuses_too_few_speakers_before_extraction(tmp_path, monkeypatch, capsys):
    from tests.conftest import write_tone

    for emo in ("a", "b"):
        for i in range(3):
            write_tone(tmp_path / "corpus" / emo / f"{i}.wav", seconds=0.3)
    from serkit.train import cv

    def no_extraction(*a, **k):
        raise AssertionError("extraction ran before the protocol was checked")

    monkeypatch.setattr(cv, "feature_source", no_extraction)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"corpus: folder\nroot: {tmp_path / 'corpus'}\nencoder: {{id: fbank-40}}\n"
                   f"protocol: {{name: speaker_kfold, k: 2, val_speakers: 1}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("serkit train: error:") and "1 speaker(s)" in err and "\n" not in err


def test_the_card_quotes_cross_validation_figures(spk_model, tmp_path, tiny_corpus, capsys):
    import shutil

    from serkit.model_card import write_model_card
    from serkit.train.final import _cv_summary

    d = tmp_path / "m"
    shutil.copytree(spk_model, d)
    val = json.loads((d / "validation.json").read_text())
    cv = {"name": "tiny", "protocol": {"name": "speaker_kfold", "k": 3}, "speaker_independent": True,
          "feature_normalisation": "none", "folds": [{}, {}, {}],
          "mean": {"ua": 0.8123, "wa": 0.8, "macro_f1": 0.79}, "std": {"ua": 0.0456, "wa": 0.05, "macro_f1": 0.06}}
    (d / "validation.json").write_text(json.dumps({**val, "cv": _cv_summary(cv)}))
    card = write_model_card(d).read_text()
    assert "3 folds" in card and "| ua | 0.812 ± 0.046 |" in card
    assert main(["info", str(d)]) == 0 and "cv:        ua 0.812 ± 0.046 (3 folds)" in capsys.readouterr().out
    # a results.json that cannot be read stops `serkit train` before any work, in one line
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"corpus: csv\nroot: {tiny_corpus / 'table.csv'}\nencoder: {{id: fbank-40}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--cv-results", str(tmp_path / "no.json")]) == 2
    assert "--cv-results" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_train_chooses_the_select_grid_on_validation_speakers(tiny_corpus, tmp_path):
    # serkit train runs the config's train.select grid on its validation speakers, as serkit cv does per fold,
    # records every candidate and refits the chosen one
    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "normalize": "none"})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    cfg["features"]["layers"] = "all"
    cfg["train"] = {**cfg["train"], "select": {"train.weight_decay": [0.0, 1000.0]}}
    out = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    v = json.loads((out / "validation.json").read_text())["heads"]["global"]
    sel = v["selection"]
    assert sel["grid"] == {"train.weight_decay": [0.0, 1000.0]}
    scores = [c["val"] for c in sel["candidates"]]
    assert len(scores) == 2 and sel["chosen"] == sel["candidates"][int(np.argmax(scores))]["choice"]
    assert v["best_val"] == pytest.approx(max(scores))
    assert sel["chosen"] == {"train.weight_decay": 0.0}  # weight decay 1000 holds the linear head near zero


def test_predict_applies_the_feature_stages_frame_steps(tiny_corpus, tmp_path):
    """A model trained on layer-normalised, pooled frames (features.frame_norm / pool_frames) is fed the same at
    prediction: every frame zero-mean over the feature dimension, half as many frames."""
    cfg = tiny_config(tiny_corpus, features={"frame_norm": "layer", "pool_frames": 2}, train={"epochs": 1})
    rec = Recognizer.from_pretrained(train_final(cfg, tmp_path / "model", refit=False, log=lambda *a: None))
    seen = []
    forward = rec.model.forward
    rec.model.forward = lambda batch: (seen.append(batch["features"].clone()), forward(batch))[1]
    clip = tiny_corpus / "spk0" / "high_0.wav"
    rec.predict(clip)
    from serkit.data.feature_transform import FeatureTransform

    rec.transform = FeatureTransform("frames", rec.transform.layers)  # the stage without its frame steps
    rec.predict(clip)
    staged, raw = seen
    assert staged.shape[2] == -(-raw.shape[2] // 2)
    assert staged.mean(-1).abs().max() < 1e-3 < raw.mean(-1).abs().max()
