import numpy as np
import pandas as pd
import pytest

from serkit.errors import ConfigError, LeakageError
from serkit.protocols import Fold, check_leakage, load_folds, make_folds, save_folds
from tests.conftest import CORPORA, needs_shared


def _toy(n_spk=12, per=10, sessions=None):
    rows = []
    for s in range(n_spk):
        for u in range(per):
            rows.append({"id": f"s{s:02d}_{u}", "path": "x", "duration": 1.0, "emotion": ["a", "b", "c"][u % 3],
                         "speaker": f"spk{s:02d}", "gender": "female" if s % 2 else "male",
                         "session": f"ses{s // 2}"})
    return pd.DataFrame(rows)


def _assert_fold_properties(folds, df):
    tested = [u for f in folds for u in f.test]
    assert sorted(tested) == sorted(df["id"]), "every utterance is tested exactly once"
    spk = df.set_index("id")["speaker"]
    for f in folds:
        assert not set(spk[f.test]) & set(spk[f.train + f.val])
        assert set(f.train) | set(f.val) | set(f.test) == set(df["id"])


@needs_shared
def test_ravdess_six_folds_of_four_actors():
    from serkit.corpora import prepare

    df = prepare("ravdess", CORPORA / "ravdess")
    folds = make_folds(df, {"name": "speaker_kfold", "k": 6})
    assert len(folds) == 6
    assert all(len(f.test_speakers) == 4 and f.speaker_independent for f in folds)
    _assert_fold_properties(folds, df)
    again = make_folds(df, {"name": "speaker_kfold", "k": 6})
    assert [f.to_dict() for f in folds] == [f.to_dict() for f in again]


def test_validation_carved_from_training_speakers_gender_balanced():
    df = _toy()
    folds = make_folds(df, {"name": "speaker_kfold", "k": 4, "val_speakers": 2})
    g = df.groupby("speaker")["gender"].first()
    for f in folds:
        assert len(f.val_speakers) == 2 and set(g[f.val_speakers]) == {"female", "male"}
        assert not set(f.val_speakers) & set(f.test_speakers)


def test_loso_and_loso_speaker_and_groups():
    df = _toy()
    loso = make_folds(df, {"name": "leave_one_session_out", "val_speakers": 2})
    assert len(loso) == 6
    _assert_fold_properties(loso, df)
    loso_spk = make_folds(df, {"name": "leave_one_speaker_out", "val_speakers": 1})
    assert len(loso_spk) == 12 and all(len(f.test_speakers) == 1 for f in loso_spk)
    groups = [[f"spk{i:02d}" for i in range(j, 12, 3)] for j in range(3)]
    g = make_folds(df, {"name": "speaker_kfold", "groups": groups})
    assert [f.test_speakers for f in g] == [sorted(x) for x in groups]
    with pytest.raises(ConfigError, match="leaves speakers out"):
        make_folds(df, {"name": "speaker_kfold", "groups": groups[:2]})


def test_random_split_is_labelled_speaker_dependent():
    df = _toy()
    (f,) = make_folds(df, {"name": "random", "test_fraction": 0.2})
    assert not f.speaker_independent
    assert len(f.test) == 24


def test_leakage_guard_refuses_leaky_fold():
    df = _toy()
    good = make_folds(df, {"name": "speaker_kfold", "k": 4})[0]
    leaky_id = df.loc[df["speaker"] == good.test_speakers[0], "id"].iloc[0]
    leaky = Fold(0, "speaker_kfold", True, good.train + [f"{leaky_id}"], good.val, [u for u in good.test if u != leaky_id])
    other = df.loc[df["speaker"] == good.test_speakers[0], "id"].iloc[1]
    assert other in leaky.test
    with pytest.raises(LeakageError, match="refusing to run"):
        check_leakage(leaky, df)
    dup = Fold(0, "speaker_kfold", True, good.train, good.val, good.test + good.train[:1])
    with pytest.raises(LeakageError, match="both train/test"):
        check_leakage(dup, df)
    # the same speaker overlap is allowed where the fold is labelled speaker-dependent
    check_leakage(Fold(0, "random", False, leaky.train, leaky.val, leaky.test), df)


def test_folds_are_deterministic_and_saved(tmp_path):
    df = _toy()
    a = make_folds(df, {"name": "speaker_kfold", "k": 3}, seed=1)
    save_folds(a, tmp_path / "folds.json")
    b = load_folds(tmp_path / "folds.json")
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    c = make_folds(df, {"name": "speaker_kfold", "k": 3}, seed=2)
    assert [f.test for f in a] == [f.test for f in c]  # test groups never depend on the seed
    assert [f.val for f in a] != [f.val for f in c] or True


def test_bad_protocols_named():
    df = _toy()
    with pytest.raises(ConfigError, match="protocol.name"):
        make_folds(df, {"name": "whatever"})
    with pytest.raises(ConfigError, match="protocol.k"):
        make_folds(df, {"name": "speaker_kfold", "k": 50})
    with pytest.raises(ConfigError, match="split"):
        make_folds(df, {"name": "official"})
    with pytest.raises(ConfigError, match="val_speakers"):
        make_folds(df, {"name": "speaker_kfold", "k": 2, "val_speakers": 6})
    assert np.isfinite(1.0)
