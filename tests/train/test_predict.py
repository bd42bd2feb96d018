import json

import numpy as np
import soundfile as sf

from serkit.cli import main
from serkit.inference import Recognizer
from serkit.train.final import train_final
from tests.train.conftest import tiny_config


def test_train_save_and_predict_short_and_long(tiny_corpus, tmp_path, capsys):
    cfg = tiny_config(tiny_corpus, predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    for name in ("config.yaml", "model.safetensors", "labels.json", "encoder.json", "meta.json"):
        assert (model_dir / name).exists()
    enc = json.loads((model_dir / "encoder.json").read_text())
    assert enc["encoder"].startswith("fbank") and enc["mode"] == "native"
    rec = Recognizer.from_pretrained(model_dir)
    short = tiny_corpus / "spk0" / "high_0.wav"
    r = rec.predict(short)
    assert r["label"] in ("low", "mid", "high") and abs(sum(r["probabilities"].values()) - 1) < 1e-3
    assert r["windows"] == []
    # a long file (concatenated clips) is scored in windows, reported too
    clips = [sf.read(str(tiny_corpus / "spk1" / f"{e}_3.wav"))[0] for e in ("low", "high", "low", "high")]
    long = tmp_path / "long.wav"
    sf.write(str(long), np.concatenate(clips * 2), 16000)
    r = rec.predict(long)
    assert r["duration"] > 4 and len(r["windows"]) >= 6
    assert all(w["end"] - w["start"] <= 1.0 + 1e-6 for w in r["windows"])
    # array input with another sample rate
    x, _ = sf.read(str(short))
    r2 = rec.predict(np.repeat(x, 2), sample_rate=32000)
    assert r2["label"] in ("low", "mid", "high")
    # CLI, csv and json; a bad file does not stop the list
    capsys.readouterr()  # drop what training printed (e.g. the extraction line when the cache was empty)
    assert main(["predict", str(model_dir), str(short), str(long), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("file,duration,label") and len(out.splitlines()) == 3
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    results = rec.predict_files([bad, short])
    assert "unreadable" in results[0]["error"] and results[1]["label"]


def test_speaker_normalised_model_needs_enough_audio_of_the_speaker(tiny_corpus, tmp_path):
    import pytest

    from serkit.errors import SerkitError

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "normalize": "speaker"})
    cfg["model"] = {"name": "pooled_mlp", "layers": "all", "hidden": [], "dropout": 0.0}
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    rec = Recognizer.from_pretrained(model_dir)
    assert rec.normalize == "speaker"
    files = sorted((tiny_corpus / "spk2").glob("*.wav"))  # 12 clips, about 6.6 s
    with pytest.raises(SerkitError, match="needs at least 10 s"):
        rec.predict(files[0])
    # one speaker's files together, enrolled with a second copy of them, reach the minimum and predict well
    results = rec.predict_files(files, enroll=files + files)
    assert all("error" not in r for r in results)
    correct = sum(r["label"] == f.stem.split("_")[0] for r, f in zip(results, files, strict=True))
    assert correct >= 8, [r["label"] for r in results]
    # too little audio: every row says why, nothing raises
    short = rec.predict_files(files[:2])
    assert all("needs at least" in r["error"] for r in short)
