"""Speed perturbation: copies at another speed shift every frequency, reach only the fold that trains on their
parents, carry their parents' labels and are extracted once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serkit.augment.speed import check_factors, plan_speed_variants, speed_perturb
from serkit.config import load_config
from serkit.constants import SAMPLE_RATE
from serkit.errors import ConfigError
from tests.train.conftest import (
    tiny_config,
    tiny_corpus,  # noqa: F401
)


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spec)])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_copy_at_another_speed_scales_duration_and_pitch(factor):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 200.0 * t).astype(np.float32)
    y = speed_perturb(tone, factor)
    assert y.dtype == np.float32
    assert abs(len(y) - SAMPLE_RATE / factor) <= 2
    assert abs(_peak_hz(y) - 200.0 * factor) < 2.0


def test_factors_are_checked_with_the_key_named(tiny_corpus):  # noqa: F811
    assert check_factors([1.1, 0.9]) == [0.9, 1.1]
    for bad in ([1.0], ["fast"], [0.9, 0.9], 0.9, [3.0]):
        with pytest.raises(ConfigError, match="features.speed_perturb"):
            check_factors(bad)
    with pytest.raises(ConfigError, match="features.speed_perturb"):
        load_config(tiny_config(tiny_corpus, features={"speed_perturb": [1.0]}))
    with pytest.raises(ConfigError, match="features.source: cache"):
        load_config(tiny_config(tiny_corpus, features={"speed_perturb": [0.9], "source": "waveform"}))


def test_a_copy_keeps_its_parents_labels_and_speaker():
    import pandas as pd

    man = pd.DataFrame({"id": ["a", "b"], "path": ["a.wav", "b.wav"], "speaker": ["s1", "s2"],
                        "emotion": ["angry", "sad"], "arousal": [0.5, -0.5]})
    plan = plan_speed_variants(man, [1.1, 0.9])
    assert list(plan["id"]) == ["a~speed0.9", "b~speed0.9", "a~speed1.1", "b~speed1.1"]
    assert list(plan["parent"]) == ["a", "b", "a", "b"] and list(plan["speaker"]) == ["s1", "s2", "s1", "s2"]
    assert list(plan["emotion"]) == ["angry", "sad"] * 2 and list(plan["arousal"]) == [0.5, -0.5] * 2


def test_a_fold_trains_on_copies_of_its_training_utterances_only(tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    from serkit.augment import speed
    from serkit.data.extended import ExtendedTrainSet
    from serkit.train import datasets
    from serkit.train.cv import run_cv

    seen = []
    original = ExtendedTrainSet.__init__

    def record(self, base, extra):
        original(self, base, extra)
        seen.append(self)

    monkeypatch.setattr(ExtendedTrainSet, "__init__", record)
    monkeypatch.setattr(datasets, "_SPEED_STORES", {})
    cfg = tiny_config(tiny_corpus, features={"speed_perturb": [0.9, 1.1], "cache_dir": str(tmp_path / "cache")},
                      train={"epochs": 2, "refit": True})
    out = tmp_path / "run"
    run_cv(cfg, out, folds_only=[0], log=lambda *a: None)
    folds = json.loads((out / "folds.json").read_text())
    fold = next(f for f in folds if f["index"] == 0)
    search, refit = seen[0], seen[-1]
    for ds, allowed in ((search, set(fold["train"])), (refit, set(fold["train"]) | set(fold["val"]))):
        parents = [i.split("~speed")[0] for i in ds.extra.ids]
        assert len(ds) == 3 * ds.n_base and set(parents) == allowed
        assert sorted(parents) == sorted(list(ds.base.ids) * 2) and ds.ids[:ds.n_base] == list(ds.base.ids)
        assert not set(parents) & set(fold["test"])
    res = json.loads((out / "results.json").read_text())
    assert json.dumps(res).count('"speed_perturb": [0.9, 1.1]') >= 1  # the fold's record says what trained

    # a second run (a new process: no in-memory copy) opens the finished store without rendering anything
    monkeypatch.setattr(datasets, "_SPEED_STORES", {})
    monkeypatch.setattr(speed, "render_speed_variants", lambda *a, **k: pytest.fail("rendered again"))
    run_cv(cfg, tmp_path / "again", folds_only=[0], log=lambda *a: None)
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["folds"][0]["metrics"] == res["folds"][0]["metrics"]


@pytest.mark.parametrize("name", ["hcld", "mll", "gmp_atl", "if_mvse"])
def test_each_recipe_trains_on_the_copies_or_refuses_them(name, tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    """HCLD and MLL train on the feature stage's training sets, so the copies reach them; GMP-ATL's stages 1 and 3
    train on them, its stage 2 (frame pseudo-labels of real utterances) does not; IF-MVSE's per-view matrices hold
    each view's copies (extracted with that view's encoder) in one row order, with their parents' labels. A recipe
    that cannot take them (``no_speed_copies``) refuses the option, naming why."""
    from serkit.data.extended import ExtendedTrainSet
    from serkit.recipes.catalog import get_recipe
    from serkit.train import datasets
    from serkit.train.cv import run_cv
    from tests.train.test_runner import recipe_config

    extra, n_base = [], []
    original = ExtendedTrainSet.__init__

    def record(self, base, more):
        original(self, base, more)
        extra.append(len(more))
        n_base.append(len(base))

    monkeypatch.setattr(ExtendedTrainSet, "__init__", record)
    monkeypatch.setattr(datasets, "_SPEED_STORES", {})
    cfg = recipe_config(name, tiny_corpus, tmp_path / "enc")
    cfg["features"] = {**cfg["features"], "normalize": "none", "speed_perturb": [1.1],
                       "cache_dir": str(tmp_path / "cache")}
    if name == "gmp_atl":  # every stage, the stats heads (pooled statistics in stage 1, frames + statistics after)
        cfg["recipe_options"] = {
            "stages": [1, 2, 3], "stage1": {"head": "stats", "proj_dim": 4},
            "cluster": {"ks": [2, 3], "backend": "torch", "niter": 2, "max_points_per_centroid": 8},
            "stage2": {"finetune": "top:1", "hidden": 4, "train": {"epochs": 1}},
            "stage3": {"head": "stats", "proj_dim": 4, "finetune": "top:1"}}
    if get_recipe(name).no_speed_copies:
        with pytest.raises(ConfigError, match=f"speed_perturb does not apply to the {name} recipe"):
            run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
        assert not (tmp_path / "cache").exists()  # refused before any extraction
        return
    sampled = []
    if name == "hcld":  # its pair sampler draws from the labels of every item, copies included
        from serkit.data.pairs import PairBatchSampler

        batches = PairBatchSampler.__iter__
        monkeypatch.setattr(PairBatchSampler, "__iter__", lambda self: (sampled.extend(b) or b for b in batches(self)))
    pseudo_ids = []
    if name == "gmp_atl":  # stage 2's training set: the real utterances with their frames' pseudo-labels
        from serkit.recipes.gmp_atl import PseudoLabelItems

        made = PseudoLabelItems.__init__
        monkeypatch.setattr(PseudoLabelItems, "__init__",
                            lambda self, base, pseudo: pseudo_ids.extend(base.ids) or made(self, base, pseudo))
    views = []
    if name == "if_mvse":
        from serkit.data.views import ViewDataset

        built = ViewDataset.__init__
        monkeypatch.setattr(ViewDataset, "__init__", lambda self, v, enc: views.append((v, enc)) or built(self, v, enc))
    run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert extra and all(n > 0 for n in extra)
    if name == "if_mvse":  # both views (fbank-40, fbank-80) with their copies, the training matrices one row each
        assert len(extra) >= 2 and set(extra) == {n_base[0] * 1}
        train_sets = [(v, enc) for v, enc in views if len(enc["emotion"]) == n_base[0] + extra[0]]
        assert train_sets and all({m.shape[0] for m in v.values()} == {n_base[0] + extra[0]} for v, _ in train_sets)
        assert [m.shape[1] for m in train_sets[0][0].values()] == [40 * 2, 80 * 2]
    if name == "hcld":
        assert max(sampled) >= n_base[0]  # beyond the real utterances: copies were drawn
    if name == "gmp_atl":
        assert pseudo_ids and not [i for i in pseudo_ids if "~speed" in i]
        assert len(extra) >= 3  # stage 1's pooled set, stage 3's frames and statistics


def test_another_class_set_of_the_corpus_reuses_the_copies_it_shares(tiny_corpus, tmp_path, monkeypatch):  # noqa: F811
    """One store of copies per corpus store and factor set: a second manifest (a subset) renders its copies again
    but extracts nothing the store holds; a third call with the same manifest renders nothing."""
    import pandas as pd

    from serkit.augment import speed
    from serkit.features import extraction

    reports = []
    original = extraction.extract_to_cache

    def spy(*a, **k):
        reports.append(original(*a, **k))
        return reports[-1]

    monkeypatch.setattr(extraction, "extract_to_cache", spy)
    man = pd.read_csv(tiny_corpus / "table.csv")
    enc = {"id": "fbank-40", "layers": "all"}
    base = tmp_path / "tiny" / "fbank-40-native-all"
    _, full = speed.ensure_speed_store(man, [1.1], enc, base, progress=False, log=lambda *a: None)
    sub = man[man["emotion"] != "high"].reset_index(drop=True)
    store, part = speed.ensure_speed_store(sub, [1.1], enc, base, progress=False, log=lambda *a: None)
    assert [r.computed for r in reports] == [len(man), 0] and reports[1].reused == len(sub)
    assert set(part["id"]) < set(full["id"]) and all(i in store for i in part["id"])
    assert sorted(p.name for p in base.parent.iterdir()) == ["fbank-40-native-all-speed-1.1"]
    monkeypatch.setattr(speed, "render_speed_variants", lambda *a, **k: pytest.fail("rendered again"))
    again = speed.ensure_speed_store(sub, [1.1], enc, base, progress=False, log=lambda *a: None)[1]
    assert list(again["id"]) == list(part["id"]) and list(again.columns) == list(part.columns)
