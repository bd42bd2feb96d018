"""The model that ships inside serkit: packing a model folder into the package, and `serkit predict CLIP` with no
model argument."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from serkit.train.cli import split_model_argument
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def test_the_first_argument_is_a_model_only_when_it_is_one(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "meta.json").write_text("{}")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    assert split_model_argument([str(model), str(clip)]) == (str(model), [str(clip)])
    assert split_model_argument([str(clip)]) == (None, [str(clip)])
    assert split_model_argument([str(clip), str(clip)]) == (None, [str(clip), str(clip)])
    assert split_model_argument(["owner/name", str(clip)]) == ("owner/name", [str(clip)])  # a hub id
    assert split_model_argument(["calls/x.wav", str(clip)])[0] is None  # an audio name, not a hub id
    assert split_model_argument([str(tmp_path), str(clip)])[0] is None  # a folder of clips, not a model


def test_pack_keeps_what_prediction_needs_without_local_paths(tiny_corpus, tmp_path):
    from serkit.inference import Recognizer
    from serkit.shipped_model import LICENCE, pack
    from serkit.train.final import train_final

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"}, train={"epochs": 1})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    model = train_final(cfg, tmp_path / "m", log=lambda *a: None)
    packed = pack(model, tmp_path / "pkg" / "default_model")
    saved = yaml.safe_load((packed / "config.yaml").read_text())
    assert saved["root"] is None and saved["features"]["cache_dir"] is None
    assert str(tmp_path) not in "".join(p.read_text() for p in packed.iterdir()
                                        if p.suffix in (".yaml", ".json", ".md"))
    assert LICENCE in (packed / "README.md").read_text()
    clip = tiny_corpus / "spk0" / "high_0.wav"
    assert Recognizer.from_pretrained(packed).predict(clip)["label"] == Recognizer.from_pretrained(model).predict(
        clip)["label"]
    # the card names the copies the validation speakers chose over the config's train.select grid
    assert "speed" not in (packed / "README.md").read_text()
    record = json.loads((model / "validation.json").read_text())
    record["heads"]["global"]["selection"] = {"chosen": {"features.speed_perturb": [0.9, 1.1]}}
    (model / "validation.json").write_text(json.dumps(record))
    assert "at 0.9x and 1.1x speed" in (pack(model, tmp_path / "pkg2" / "default_model") / "README.md").read_text()


@pytest.mark.skipif(not (SHARED / "hf-cache").is_dir() or not os.environ.get("HF_HUB_CACHE"),
                    reason="needs openai/whisper-base in the Hugging Face cache")
def test_serkit_predict_a_clip_with_no_model_uses_the_shipped_one(capsys):
    from serkit.cli import main
    from serkit.shipped_model import DEFAULT_MODEL_DIR

    labels = json.loads((DEFAULT_MODEL_DIR / "labels.json").read_text())["classes"]
    clip = next((SHARED / "corpora" / "emodb" / "wav").glob("03a01Wa.flac"))
    assert main(["predict", str(clip)]) == 0
    out = json.loads(capsys.readouterr().out)
    result = out[0] if isinstance(out, list) else out
    assert result["label"] in labels and abs(sum(result["probabilities"].values()) - 1) < 1e-3


@pytest.mark.skipif(not (SHARED / "hf-cache").is_dir() or not os.environ.get("HF_HUB_CACHE"),
                    reason="needs openai/whisper-base in the Hugging Face cache")
def test_the_shipped_model_answers_the_same_clip_the_same_at_any_gain():
    """A stranger's microphone gain is arbitrary: the same clip ten times softer (or as loud as it can be without
    clipping) gets the same probabilities."""
    import numpy as np
    import soundfile as sf

    from serkit.inference import Recognizer
    from serkit.shipped_model import DEFAULT_MODEL_DIR

    assert json.loads((DEFAULT_MODEL_DIR / "encoder.json").read_text()).get("level_db") is not None
    rec = Recognizer.from_pretrained()
    x, sr = sf.read(str(SHARED / "corpora" / "emodb" / "wav" / "03a01Wa.flac"), dtype="float32")
    probs = [np.array(list(rec.predict(x * g, sr)["probabilities"].values()))
             for g in (1.0, 0.1, 0.99 / float(np.abs(x).max()))]
    for p in probs[1:]:
        np.testing.assert_allclose(p, probs[0], atol=2e-3)


def test_the_card_gives_in_corpus_and_cross_corpus_figures():
    from serkit.shipped_model import LICENCE, card

    entry = {"metric": "ua", "in_corpus": {"emodb": {"ua": 0.81, "std": 0.05, "folds": 5}},
             "rows": [{"train": ["ravdess"], "test": "emodb", "ua": 0.412}]}
    text = card({"n_train": 10, "n_speakers": 2}, {"classes": ["a", "b"]}, {"cross_corpus": entry})
    assert "| ravdess | emodb | 0.412 |" in text and "0.810 ± 0.050 (5 folds)" in text and LICENCE in text
    assert text.startswith("---\nlicense: cc-by-nc-sa-4.0")


def test_the_card_names_the_copies_the_model_trained_on_and_the_config_of_its_figures():
    from serkit.shipped_model import CARD_CV_CONFIG, card

    entry = {"metric": "ua", "in_corpus": {}, "rows": []}
    plain = card({"n_train": 10, "n_speakers": 2}, {"classes": ["a"]}, {"cross_corpus": entry})
    sped = card({"n_train": 10, "n_speakers": 2}, {"classes": ["a"]}, {"cross_corpus": entry}, [0.9, 1.1])
    assert "copies" not in plain.split("```")[0] and "at 0.9x and 1.1x speed" in sped
    assert f"`serkit cv {CARD_CV_CONFIG}`" in sped and (REPO / CARD_CV_CONFIG).exists()
    levelled = card({"n_train": 10, "n_speakers": 2}, {"classes": ["a"]}, None, None, -23.0)
    assert "-23 dBFS" in levelled and "dBFS" not in plain
