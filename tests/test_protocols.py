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
    leaky = Fold(0, "speaker_kfold", True, good.train + [f"{leaky_id}"], good.val,
                 [u for u in good.test if u != leaky_id])
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


def unequal_manifest(seed: int = 0) -> pd.DataFrame:
    """The issue-16 corpus shape: 29 speakers of 6 to 80 utterances (about 400 in all), 4 classes; every other
    speaker shows one emotion only, the others all four."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(6, 80, 29).round().astype(int)
    sizes = (sizes * 400 / sizes.sum()).round().astype(int).clip(6)
    classes = ["angry", "happy", "neutral", "sad"]
    rows = []
    for s, n in enumerate(rng.permutation(sizes)):
        for u in range(n):
            emo = classes[s % 4] if s % 2 else classes[u % 4]
            rows.append({"id": f"s{s:02d}_{u:03d}", "path": "x", "duration": 2.0, "emotion": emo,
                         "speaker": f"spk{s:02d}", "gender": "female" if s % 3 else "male"})
    return pd.DataFrame(rows)


def test_balanced_grouping_evens_out_unequal_speakers():
    df = unequal_manifest()
    folds = make_folds(df, {"name": "speaker_kfold", "k": 5, "val_speakers": 2})
    _assert_fold_properties(folds, df)
    sizes = np.array([len(f.test) for f in folds])
    assert np.abs(sizes - sizes.mean()).max() <= 0.25 * sizes.mean(), sizes
    lab = df.set_index("id")["emotion"]
    for f in folds:
        assert set(lab[f.test]) == set(lab), f"fold {f.index} test lacks a class"
        # validation topped up to 10 % of the training utterances, with every class
        assert len(f.val) >= 0.1 * (len(f.train) + len(f.val)) and set(lab[f.val]) == set(lab[f.train])
        assert not f.warnings, f.warnings
    again = make_folds(df.sample(frac=1, random_state=3), {"name": "speaker_kfold", "k": 5, "val_speakers": 2})
    assert [f.test_speakers for f in again] == [f.test_speakers for f in folds]  # deterministic, order-free
    # today's contiguous grouping of the same corpus is far less even
    old = make_folds(df, {"name": "speaker_kfold", "k": 5, "grouping": "sorted", "val_speakers": 2})
    old_sizes = np.array([len(f.test) for f in old])
    assert old_sizes.max() - old_sizes.min() > sizes.max() - sizes.min()


def test_weak_folds_are_warned():
    df = unequal_manifest()
    # validation cannot reach its share when it may not take enough speakers: here it is asked for 60 %
    folds = make_folds(df, {"name": "speaker_kfold", "k": 4, "val_speakers": 1, "val_min_share": 0.6})
    assert all(any("validation holds" in w for w in f.warnings) for f in folds)
    # a tiny hand-made test group is flagged as small and as lacking classes
    spk = sorted(df["speaker"].unique())
    small = min(spk, key=lambda s: (df["speaker"] == s).sum())
    rest = [s for s in spk if s != small]
    groups = [[small], rest[::2], rest[1::2]]
    f0 = make_folds(df, {"name": "speaker_kfold", "groups": groups, "val_speakers": 2})[0]
    assert any("less than half the mean" in w for w in f0.warnings)
    assert any("lacks class" in w or "one class only" in w for w in f0.warnings)


# Today's folds on the shared corpora (test speakers and validation speakers; train_seed 0), recorded before
# speaker_kfold learnt balanced grouping: the named protocols must keep giving exactly these.
RAVDESS_TEST = [[f"ravdess_{i:02d}" for i in range(j, j + 4)] for j in range(1, 25, 4)]
RAVDESS_VAL2 = [["07", "08"], ["12", "13"], ["01", "04"], ["05", "22"], ["03", "12"], ["05", "18"]]
RAVDESS_VAL4 = [["07", "08", "15", "22"], ["11", "12", "13", "18"], ["01", "04", "05", "22"],
                ["03", "05", "08", "22"], ["03", "08", "09", "12"], ["05", "11", "12", "18"]]
EMODB_TEST = [["03", "08"], ["09", "10"], ["11", "12"], ["13", "14"], ["15", "16"]]
EMODB_VAL2 = [["10", "16"], ["11", "16"], ["09", "15"], ["08", "15"], ["12", "13"]]


@needs_shared
@pytest.mark.parametrize("config, test, val", [
    ("configs/ravdess/baseline.yaml", RAVDESS_TEST, [[f"ravdess_{s}" for s in v] for v in RAVDESS_VAL2]),
    ("configs/ravdess/baseline-frames.yaml", RAVDESS_TEST, [[f"ravdess_{s}" for s in v] for v in RAVDESS_VAL4]),
    ("configs/emodb/baseline.yaml", [[f"emodb_{s}" for s in v] for v in EMODB_TEST],
     [[f"emodb_{s}" for s in v] for v in EMODB_VAL2]),
])
def test_named_protocols_keep_todays_folds_on_shared_corpora(config, test, val, monkeypatch):
    from serkit.config import load_config
    from serkit.corpora import get_reader
    from serkit.train.experiment import experiment_protocol, load_experiment_manifest

    monkeypatch.setenv("SERKIT_DATA", str(CORPORA.parent))
    cfg = load_config(config)
    df = load_experiment_manifest(cfg)
    folds = make_folds(df, experiment_protocol(cfg, df), seed=0)
    assert [f.test_speakers for f in folds] == test
    assert [f.val_speakers for f in folds] == val
    assert not any(f.warnings for f in folds)
    default = make_folds(df, dict(get_reader(cfg["corpus"]).default_protocol), seed=0)
    assert [f.test_speakers for f in default] == test


def test_cross_corpus_folds():
    a = _toy(6, 12).assign(corpus="alpha")
    b = _toy(4, 9).assign(corpus="beta", speaker=lambda d: "b" + d["speaker"], id=lambda d: "b" + d["id"])
    df = pd.concat([a, b], ignore_index=True)
    folds = make_folds(df, {"name": "cross_corpus", "val_speakers": 1})
    assert [(f.train_corpora, f.test_corpus) for f in folds] == [(["beta"], "alpha"), (["alpha"], "beta")]
    corp = df.set_index("id")["corpus"]
    for f in folds:
        assert set(corp[f.test]) == {f.test_corpus} and set(corp[f.train + f.val]) == set(f.train_corpora)
    one = make_folds(df, {"name": "cross_corpus", "train": ["alpha"], "test": "beta"})
    assert len(one) == 1 and one[0].test_corpus == "beta"
    with pytest.raises(ConfigError, match="lacks"):
        make_folds(df, {"name": "cross_corpus", "train": ["alpha"], "test": "gamma"})


def test_training_only_corpora_join_every_training_part_and_nothing_else():
    a = _toy(6, 12).assign(corpus="alpha")
    b = _toy(4, 9).assign(corpus="beta", speaker=lambda d: "b" + d["speaker"], id=lambda d: "b" + d["id"])
    protocol = {"name": "speaker_kfold", "k": 3, "grouping": "sorted", "val_speakers": 1}
    alone = make_folds(a, protocol)
    both = make_folds(pd.concat([b, a], ignore_index=True), {**protocol, "training_only": ["beta"]})
    assert len(both) == len(alone)
    for f, g in zip(both, alone, strict=True):
        # the folds of alpha are what they are without beta; beta is training data in every fold, nowhere else
        assert (f.test, f.val, f.test_speakers, f.val_speakers) == (g.test, g.val, g.test_speakers, g.val_speakers)
        assert f.train == g.train + b["id"].tolist()
    for bad, match in (({"training_only": ["gamma"]}, "gamma"),
                       ({"training_only": ["alpha", "beta"]}, "at least one"),
                       ({"training_only": "beta"}, "list"),
                       ({"name": "cross_corpus", "training_only": ["beta"]}, "cross")):
        with pytest.raises(ConfigError, match=match):
            make_folds(pd.concat([a, b], ignore_index=True), {**protocol, **bad})
    clash = b.assign(speaker=a["speaker"].iloc[0])  # a speaker in both corpora would leak into training
    with pytest.raises(LeakageError):
        make_folds(pd.concat([a, clash], ignore_index=True), {**protocol, "training_only": ["beta"]})


def test_one_class_test_fold_is_refused_before_training():
    from serkit.train.cv import check_folds

    df = unequal_manifest()
    one = df.loc[df["speaker"] == "spk01", "id"].tolist()  # spk01 shows one emotion only
    fold = Fold(0, "speaker_kfold", True, [u for u in df["id"] if u not in set(one)], [], one, ["spk01"])
    with pytest.raises(ConfigError, match="only class"):
        check_folds({"task": "classification"}, [fold], df)
    check_folds({"task": "regression"}, [fold], df)
