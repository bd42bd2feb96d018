"""Choices made per fold on the validation speakers: ``features.normalize: auto`` and ``train.select``."""

import numpy as np
import pytest

from serkit.config import load_config
from serkit.protocols import make_folds
from serkit.train.fit import fit_fold
from serkit.train.select import best, candidates, grid
from tests.test_protocols import unequal_manifest


class PooledStore:
    """An in-memory stand-in for a feature store with pooled statistics only: one layer, ``dim`` features.

    Each utterance is its class's pattern plus its speaker's offset plus noise, so that z-scoring a speaker who
    shows one emotion only removes that emotion along with the speaker (the issue-16 broadcast corpus)."""

    def __init__(self, manifest, dim=8, seed=0):
        rng = np.random.default_rng(seed)
        self.layers = [0]
        self.hidden_size = dim
        classes = sorted(manifest["emotion"].unique())
        pattern = {c: rng.normal(0, 1.0, dim) for c in classes}
        offset = {s: rng.normal(0, 0.8, dim) for s in manifest["speaker"].unique()}
        self._pooled = {}
        for r in manifest.itertuples():
            mean = pattern[r.emotion] + offset[r.speaker] + rng.normal(0, 0.6, dim)
            self._pooled[r.id] = np.concatenate([mean, np.full(dim, 1.0)])[None].astype(np.float32)

    def pooled(self, uid):
        return self._pooled[uid]

    def entry(self, uid):
        return {"frames": 100, "seconds": 2.0}


def _cfg(**features):
    return load_config({
        "name": "select", "manifest": "unused.csv", "protocol": {"name": "speaker_kfold", "k": 5, "val_speakers": 2},
        "features": {"level": "pooled", "layers": "all", **features},
        "model": {"name": "pooled_mlp", "hidden": [], "dropout": 0.0, "input_norm": "batchnorm"},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.02, "patience": 6, "progress": False},
    })


def test_grid_and_candidates():
    cfg = _cfg(normalize="auto")
    cfg["train"]["select"] = {"train.weight_decay": [0.01, 0.1]}
    assert grid(cfg) == {"features.normalize": ["speaker", "none"], "train.weight_decay": [0.01, 0.1]}
    cands = candidates(cfg)
    assert [c for c, _ in cands][1] == {"features.normalize": "speaker", "train.weight_decay": 0.1}
    assert all(c["features"]["normalize"] in ("speaker", "none") and c["train"]["select"] is None for _, c in cands)
    assert best([0.5, None, 0.7, 0.7]) == 2
    with pytest.raises(Exception, match="train.select"):
        load_config({"manifest": "x.csv", "train": {"select": {"weight_decay": [1]}}})


def test_auto_normalisation_is_chosen_on_validation(tmp_path):
    man = unequal_manifest().assign(corpus="csv")
    store = PooledStore(man)
    folds = make_folds(man, {"name": "speaker_kfold", "k": 5, "val_speakers": 2})
    for fold in folds[:1]:
        res = fit_fold(_cfg(normalize="auto", speaker_min_utterances=8), man, fold, store,
                       tmp_path / f"auto{fold.index}")
        sel = res["selection"]
        scores = {c["choice"]["features.normalize"]: c["val"] for c in sel["candidates"]}
        chosen = sel["chosen"]["features.normalize"]
        assert res["normalisation"]["mode"] == chosen
        assert scores[chosen] == max(scores.values())
        assert scores[chosen] >= scores["none"] - 0.01  # never below global features on validation
        # the candidate's validation score is what a plain run with that setting gets (nothing else looked at)
        plain = fit_fold(_cfg(normalize="none"), man, fold, store, tmp_path / f"none{fold.index}")
        assert plain["best_val"] == pytest.approx(scores["none"])
        if chosen == "speaker":
            small = sorted(s for s, n in man.groupby("speaker").size().items() if n < 8)
            assert res["normalisation"]["fallback_speakers"] == small


def test_cross_corpus_table_format():
    from serkit.report import format_cross_table

    entry = {"metric": "ua", "in_corpus": {"a": {"ua": 0.8, "std": 0.05, "folds": 6}, "b": {"ua": 0.9, "std": 0.04,
                                                                                              "folds": 5}},
             "rows": [{"train": ["a"], "test": "b", "ua": 0.41}, {"train": ["b"], "test": "a", "ua": 0.37}]}
    text = format_cross_table(entry, {"class_set": "6class", "features": {"normalize": "speaker"}})
    lines = text.splitlines()
    assert lines[2] == "| train \\ test | a | b |"
    assert lines[4] == "| a | (0.800 ± 0.050, in-corpus, 6 folds) | **0.410** |"
    assert lines[5] == "| b | **0.370** | (0.900 ± 0.040, in-corpus, 5 folds) |"


def _one_emotion_per_speaker(seed: int = 0):
    """16 speakers who each show one of 4 emotions (12 utterances each): every speaker's mean is its emotion."""
    import pandas as pd

    classes = ["angry", "happy", "neutral", "sad"]
    rows = [{"id": f"s{s:02d}_{u:02d}", "path": "x", "duration": 2.0, "emotion": classes[s % 4],
             "speaker": f"spk{s:02d}", "gender": "female" if s % 2 else "male", "corpus": "csv"}
            for s in range(16) for u in range(12)]
    return pd.DataFrame(rows)


def test_auto_does_not_subtract_the_emotion_of_speakers_heard_in_one(tmp_path):
    """Speakers who show one emotion each: speaker statistics subtract the emotion and lose to global features;
    auto does not consider them (and says why), so it scores what global features score."""
    from serkit.train.select import emotion_coverage

    man = _one_emotion_per_speaker()
    store = PooledStore(man)
    assert emotion_coverage(man, man["id"]) == 0.25
    fold = make_folds(man, {"name": "speaker_kfold", "k": 4, "val_speakers": 4})[0]
    speaker = fit_fold(_cfg(normalize="speaker", speaker_min_utterances=1), man, fold, store, tmp_path / "spk")
    none = fit_fold(_cfg(normalize="none"), man, fold, store, tmp_path / "none")
    auto = fit_fold(_cfg(normalize="auto", speaker_min_utterances=1), man, fold, store, tmp_path / "auto")
    assert speaker["metrics"]["ua"] < none["metrics"]["ua"] - 0.2  # the old trap: the emotion is subtracted
    assert auto["normalisation"]["mode"] == "none" and "not considered" in auto["selection"]["note"]
    assert auto["metrics"]["ua"] == pytest.approx(none["metrics"]["ua"])
