"""Readers on the real corpora in ../shared."""

import pytest

from serkit.corpora import apply_class_set, prepare
from serkit.manifest import read_manifest, write_manifest
from tests.conftest import CORPORA, needs_shared

pytestmark = needs_shared


def test_ravdess():
    df = prepare("ravdess", CORPORA / "ravdess")
    assert len(df) == 1440 and df["speaker"].nunique() == 24
    counts = df["emotion"].value_counts()
    assert counts["neutral"] == 96 and (counts.drop("neutral") == 192).all()
    r = df.set_index("id").loc["03-01-05-02-01-01-13"]
    assert (r.emotion, r.speaker, r.gender, r.intensity) == ("angry", "ravdess_13", "male", "strong")
    assert (df.groupby("speaker").size() == 60).all()
    assert df["duration"].between(2.5, 6).all()


def test_emodb():
    df = prepare("emodb", CORPORA / "emodb")
    assert len(df) == 535 and df["speaker"].nunique() == 10
    r = df.set_index("id").loc["03a01Wa"]
    assert (r.emotion, r.speaker, r.gender) == ("angry", "emodb_03", "male")
    assert df.set_index("id").loc["08a01Na", "gender"] == "female"
    assert df["emotion"].value_counts().to_dict() == {
        "angry": 127, "bored": 81, "neutral": 79, "happy": 71, "fearful": 69, "sad": 62, "disgust": 46}


def test_tava():
    df = prepare("tava", CORPORA / "tava")
    assert len(df) == 352 and df["speaker"].nunique() == 22
    assert (df["gender"].value_counts() == 176).all()
    r = df.set_index("id").loc["s01_joyful_audio"]
    assert r.emotion == "joyful" and r.gender == "male"
    assert r.valence == pytest.approx(0.692745098) and r.arousal == pytest.approx(0.735490196)
    assert r.dominance == pytest.approx(0.323529412)
    assert df[["valence", "arousal", "dominance"]].abs().max().max() <= 1.0


def test_manifest_roundtrip_csv_parquet(tmp_path):
    df = prepare("emodb", CORPORA / "emodb")
    for suffix in (".csv", ".parquet"):
        out = write_manifest(df, tmp_path / f"m{suffix}")
        back = read_manifest(out)
        assert back["id"].tolist() == df["id"].tolist()
        assert back["speaker"].tolist() == df["speaker"].tolist()


def test_class_set_maps_and_drops():
    df = prepare("ravdess", CORPORA / "ravdess")
    four = apply_class_set(df, "4class")
    assert set(four["emotion"]) == {"neutral", "happy", "sad", "angry"} and len(four) == 96 + 3 * 192
    merged = apply_class_set(df, {"calm": "neutral", "neutral": "neutral"})
    assert len(merged) == 288 and set(merged["raw_emotion"]) == {"calm", "neutral"}
