"""Readers of corpora that are not in ../shared, on small fixture trees built here from their documented layouts."""

import pandas as pd
import pytest

from serkit.corpora import apply_class_set, prepare
from serkit.errors import CorpusError
from serkit.protocols import make_folds
from tests.conftest import write_tone


def _iemocap(root):
    lines = {
        1: [("Ses01F_impro01", "Ses01F_impro01_F000", "neu", "2.5000, 2.5000, 2.5000"),
            ("Ses01F_impro01", "Ses01F_impro01_M001", "exc", "4.0000, 3.5000, 3.0000"),
            ("Ses01F_impro01", "Ses01F_impro01_F002", "fru", "2.0000, 3.0000, 3.0000"),
            ("Ses01M_script01_1", "Ses01M_script01_1_M000", "ang", "1.5000, 4.0000, 4.0000")],
        2: [("Ses02F_impro02", "Ses02F_impro02_F000", "sad", "1.5000, 2.0000, 2.0000"),
            ("Ses02F_impro02", "Ses02F_impro02_M000", "hap", "4.5000, 3.0000, 3.0000"),
            ("Ses02F_impro02", "Ses02F_impro02_M001", "xxx", "3.0000, 3.0000, 3.0000")],
    }
    for ses, items in lines.items():
        by_dialog = {}
        for dialog, utt, emo, vad in items:
            by_dialog.setdefault(dialog, []).append(f"[1.0000 - 2.5000]\t{utt}\t{emo}\t[{vad}]")
            write_tone(root / f"Session{ses}" / "sentences" / "wav" / dialog / f"{utt}.wav", seconds=0.3)
        for dialog, ls in by_dialog.items():
            f = root / f"Session{ses}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            f.write_text(header + "\n".join(l + "\nC-E1:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()" for l in ls)
                         + "\n")


def test_iemocap(tmp_path):
    _iemocap(tmp_path)
    df = prepare("iemocap", tmp_path)
    assert len(df) == 7
    r = df.set_index("id").loc["Ses01F_impro01_M001"]
    assert (r.emotion, r.speaker, r.gender, r.session) == ("excited", "Ses01M", "male", "Ses01")
    assert (r.valence, r.arousal, r.dominance) == (4.0, 3.5, 3.0)
    four = apply_class_set(df, "4class")
    assert sorted(four["emotion"]) == ["angry", "happy", "happy", "neutral", "sad"]
    folds = make_folds(four, {"name": "leave_one_session_out", "val_speakers": 1})
    assert len(folds) == 2 and all(f.speaker_independent for f in folds)


def test_msp_podcast(tmp_path):
    rows = []
    for i, (emo, split, spk, g) in enumerate([("A", "Train", 1, "Female"), ("H", "Train", 2, "Male"),
                                              ("N", "Development", 3, "Male"), ("S", "Test1", 4, "Female"),
                                              ("X", "Test2", "Unknown", "Unknown")]):
        name = f"MSP-PODCAST_0001_{i:04d}.wav"
        write_tone(tmp_path / "Audios" / name, seconds=0.3)
        rows.append({"FileName": name, "EmoClass": emo, "EmoAct": 4.2, "EmoVal": 3.0 + i, "EmoDom": 4.0,
                     "SpkrID": spk, "Gender": g, "Split_Set": split})
    (tmp_path / "Labels").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "Labels" / "labels_consensus.csv", index=False)
    df = prepare("msp-podcast", tmp_path).set_index("id")
    assert len(df) == 5
    assert df.loc["MSP-PODCAST_0001_0000", ["emotion", "gender", "split"]].tolist() == ["angry", "female", "train"]
    assert df.loc["MSP-PODCAST_0001_0002", "split"] == "validation"
    assert df.loc["MSP-PODCAST_0001_0003", "split"] == "test"
    assert df.loc["MSP-PODCAST_0001_0004", "speaker"] == "unknown"
    assert df.loc["MSP-PODCAST_0001_0001", "valence"] == 4.0
    folds = make_folds(df.reset_index(), {"name": "official"})
    assert len(folds) == 1 and folds[0].test == ["MSP-PODCAST_0001_0003"]


def test_msp_improv(tmp_path):
    names = []
    for ses in range(1, 7):
        for spk in "FM":
            names.append((f"S0{ses}A-{spk}0{ses}-S-{spk}M0{ses}", "A"))
            names.append((f"S0{ses}H-{spk}0{ses}-P-{spk}F0{ses}", "H"))
    lines = []
    for name, emo in names:
        ses = int(name.split("-")[1][1:])
        write_tone(tmp_path / "Audio" / f"session{ses}" / name.split("-")[0] / name.split("-")[2]
                   / f"MSP-IMPROV-{name}.wav", seconds=0.3)
        lines.append(f"UTD-IMPROV-{name}.avi; {emo}; A:3.2; V:2.4; D:2.6; N:4.2")
        lines.append("Male, 12; A; A:3.0; V:2.0; D:3.0; N:4.0")
    (tmp_path / "Evaluation.txt").write_text("\n".join(lines) + "\n")
    df = prepare("msp-improv", tmp_path)
    assert len(df) == 24 and df["session"].nunique() == 6 and df["speaker"].nunique() == 12
    r = df.set_index("id").loc["MSP-IMPROV-S03A-F03-S-FM03"]
    assert (r.emotion, r.gender, r.speaker, r.session) == ("angry", "female", "improv_F03", "session3")
    assert len(make_folds(df, {"name": "leave_one_session_out", "val_speakers": 2})) == 6


def test_savee(tmp_path):
    for spk in ("DC", "JE", "JK", "KL"):
        for code in ("a", "d", "f", "h", "n", "sa", "su"):
            write_tone(tmp_path / "AudioData" / spk / f"{code}01.wav", seconds=0.2)
    df = prepare("savee", tmp_path)
    assert len(df) == 28 and set(df["gender"]) == {"male"}
    assert df.set_index("id").loc["JK_sa01", "emotion"] == "sad"
    assert df.set_index("id").loc["JK_su01", "emotion"] == "surprised"
    folds = make_folds(df, {"name": "leave_one_speaker_out", "val_speakers": 1})
    assert len(folds) == 4


def test_cremad(tmp_path):
    for actor in ("1001", "1002"):
        for emo in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            write_tone(tmp_path / "AudioWAV" / f"{actor}_DFA_{emo}_XX.wav", seconds=0.2)
    pd.DataFrame({"ActorID": [1001, 1002], "Age": [51, 21], "Sex": ["Male", "Female"], "Race": ["", ""],
                  "Ethnicity": ["", ""]}).to_csv(tmp_path / "VideoDemographics.csv", index=False)
    df = prepare("crema-d", tmp_path).set_index("id")
    assert len(df) == 12
    assert df.loc["1002_DFA_FEA_XX", ["emotion", "speaker", "gender"]].tolist() == ["fearful", "cremad_1002", "female"]


def test_tess(tmp_path):
    for spk in ("OAF", "YAF"):
        for emo in ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad"):
            write_tone(tmp_path / f"{spk}_{emo}" / f"{spk}_back_{emo}.wav", seconds=0.2)
    df = prepare("tess", tmp_path)
    assert len(df) == 14 and df["speaker"].nunique() == 2 and set(df["gender"]) == {"female"}
    assert df.set_index("id").loc["YAF_back_ps", "emotion"] == "surprised"


def test_generic_csv_and_folder(tmp_path):
    write_tone(tmp_path / "audio" / "x.wav")
    write_tone(tmp_path / "audio" / "y.wav")
    pd.DataFrame({"path": ["audio/x.wav", "audio/y.wav"], "emotion": ["happy", "sad"], "speaker": ["a", "b"],
                  "gender": ["F", "m"], "arousal": [0.5, -0.2]}).to_csv(tmp_path / "t.csv", index=False)
    df = prepare("csv", tmp_path / "t.csv")
    assert df["gender"].tolist() == ["female", "male"] and df["arousal"].tolist() == [0.5, -0.2]
    assert df["path"].str.endswith("x.wav").iloc[0]
    tree = tmp_path / "tree"
    write_tone(tree / "angry" / "spk1" / "a.wav")
    write_tone(tree / "calm" / "b.flac")
    df = prepare("folder", tree)
    assert sorted(df["emotion"]) == ["angry", "calm"]
    assert df.set_index("emotion").loc["angry", "speaker"] == "spk1"


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="no utterances found"):
        prepare("ravdess", tmp_path)
    with pytest.raises(CorpusError, match="unknown corpus"):
        prepare("nope", tmp_path)
