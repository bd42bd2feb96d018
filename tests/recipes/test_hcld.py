"""HCLD recipe: model outputs, pair sampler, objective terms, EER in an end-to-end run_cv (tiny corpus)."""

import json

import numpy as np
import torch

from serkit.models.registry import ModelSpec
from serkit.recipes.catalog import get_recipe
from serkit.recipes.hcld_ablation import VARIANT_TERMS, variant_config
from tests.models.test_hcld import SMALL, _batch
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401


def _tiny(root, **over):
    cfg = tiny_config(root, **over)
    cfg["model"] = {"name": "hcld", "dim": 8, "extractor_opts": SMALL, **over.get("model", {})}
    return cfg


def test_sampler_batches_contain_pairs_and_objective_terms(tiny_corpus):  # noqa: F811
    from serkit.config import load_config
    from serkit.data.labels import LabelMap
    from serkit.data.pairs import count_pairs
    from serkit.train.experiment import load_experiment_manifest

    cfg = load_config(variant_config(load_config(_tiny(tiny_corpus)), "cnn", "hcld"))
    manifest = load_experiment_manifest(cfg)
    labels = LabelMap.fit(manifest, "classification", [], list(manifest["id"]))

    class DS:  # what the recipe reads from a FeatureDataset
        enc = labels.encode(manifest)

        def __len__(self):
            return len(manifest)

    recipe = get_recipe("hcld")
    kind, sampler = recipe.train_sampler(cfg, DS(), seed=0)
    assert kind == "batch_sampler"
    batches = list(sampler)
    assert len(batches) >= 3
    for b in batches:
        pos, neg = count_pairs(DS.enc["emotion"][b], DS.enc["speaker"][b])
        assert pos >= 1 and neg >= 1
    spec = ModelSpec("classification", len(labels.classes), 2, 6, len(labels.speakers), list(labels.classes))
    obj = recipe.build_objective(cfg, labels, DS.enc, spec)
    assert list(obj.terms) == VARIANT_TERMS["hcld"]
    assert obj.terms["lcl"].label_embeddings.shape[0] == len(labels.classes)
    model = recipe.build_model(cfg, spec)
    batch = _batch()
    batch["emotion"] = torch.tensor([0, 1, 2, 0, 1])
    total, parts = obj(model(batch), batch)
    assert set(parts) == set(VARIANT_TERMS["hcld"]) and torch.isfinite(total)
    total.backward()


def test_end_to_end_run_cv_reports_speaker_eer(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.recipes.hcld_ablation import run_ablation

    base = _tiny(tiny_corpus, features={"max_frames": 375}, train={"epochs": 2, "batch_size": 12})
    md, df = run_ablation(base, tmp_path / "abl", extractors=["cnn"], variants=["emotion_only", "hcld"],
                          folds_only=[0], log=lambda *a: None)
    res = json.loads((tmp_path / "abl" / "cnn-hcld" / "results.json").read_text())
    m = res["folds"][0]["metrics"]
    assert 0.0 <= m["speaker_eer"] <= 1.0 and 0.0 <= m["emotion_feature_eer"] <= 1.0
    assert "speaker_wa" not in m  # speaker-independent fold: the closed-set head is not scored
    assert len(df) == 2 and np.isnan(df.loc[0, "speaker_eer_mean"]) and df.loc[1, "speaker_eer_mean"] >= 0
    assert "speaker EER" in md and (tmp_path / "abl" / "table.csv").exists()
    md2, df2 = run_ablation(base, tmp_path / "abl", extractors=["cnn"], table_only=True, log=lambda *a: None)
    assert md2 == md and len(df2) == 2  # finished rows read back, missing ones skipped


def test_random_protocol_scores_speaker_head(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.config import load_config
    from serkit.train.cv import run_cv

    base = _tiny(tiny_corpus, protocol={"name": "random", "test_fraction": 0.2}, train={"epochs": 1, "batch_size": 12})
    cfg = variant_config(load_config(base), "cnn", "no_lcl")
    res = run_cv(cfg, tmp_path / "rnd", log=lambda *a: None)
    m = res["folds"][0]["metrics"]
    assert res["speaker_independent"] is False and {"speaker_wa", "speaker_ua", "speaker_eer"} <= set(m)
