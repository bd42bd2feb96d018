"""Recipe MLL: model outputs, the waveform-mixup hook, the pre-mixed variants builder, tiny end-to-end runs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from serkit.augment.variants import build_mixup, fold_test_groups, plan_variants, soft_labels, valid_variants
from serkit.data.labels import LabelMap
from serkit.protocols import make_folds
from serkit.recipes.catalog import get_recipe
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401

MLL_OBJECTIVE = [
    {"name": "kl", "weight": 0.5},
    {"name": "focal", "weight": 0.5},
    {"name": "center", "dim": 8, "lr": 0.005, "weight": 0.01},
    {"name": "frame_supcon", "max_frames": 256, "weight": 0.1},
]


def _toy_manifest(speakers=8, per=4):
    rows = []
    for s in range(speakers):
        for u in range(per):
            rows.append({"id": f"s{s}_{u}", "path": f"/x/s{s}_{u}.wav", "speaker": f"s{s}",
                         "gender": "female" if s % 2 else "male", "emotion": ["a", "b", "c"][u % 3]})
    return pd.DataFrame(rows)


def test_variants_partners_stay_in_test_group_and_skip_validation():
    man = _toy_manifest()
    folds = make_folds(man, {"name": "speaker_kfold", "k": 4, "val_speakers": 2}, seed=0)
    groups = fold_test_groups(man, folds)
    plan = plan_variants(man, folds, k=3, seed=1)
    assert len(plan) == 3 * len(man)
    assert (plan["parent"] != plan["partner"]).all()
    assert all(groups[p] == groups[q] for p, q in zip(plan["parent"], plan["partner"]))
    spk = man.set_index("id")["speaker"]
    plan["lam"] = 0.25
    n_excluded = 0
    for f in folds:
        ok = valid_variants(plan, f)
        test_spk, val_spk = set(f.test_speakers), set(f.val_speakers)
        assert ok["parent"].isin(set(f.train)).all() and ok["partner"].isin(set(f.train)).all()
        assert not set(spk[ok["partner"]]) & (test_spk | val_spk)
        assert not set(spk[ok["parent"]]) & (test_spk | val_spk)
        planned = plan[plan["parent"].isin(set(f.train))]
        n_excluded += len(planned) - len(ok)
        # every exclusion is a partner among this fold's validation items (never a test item: same group)
        dropped = planned[~planned["id"].isin(set(ok["id"]))]
        assert dropped["partner"].isin(set(f.val)).all()
    assert n_excluded > 0, "with validation speakers inside the groups some variants must be dropped"
    y = soft_labels(plan, ["a", "b", "c"])
    assert np.allclose(y.sum(1), 1.0)
    # deterministic
    assert plan_variants(man, folds, k=3, seed=1)["partner"].tolist() == plan["partner"].tolist()


def test_mixup_hook_soft_labels_sum_to_one():
    cfg = {"augment": {"name": "eam", "mode": "on_the_fly", "p": 1.0}, "features": {"source": "waveform"}}
    labels = LabelMap("classification", ["a", "b", "c"], [], [])
    hook = get_recipe("mll").batch_hook(cfg, labels)
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 12000, 9000, 16000])
    wave = torch.randn(4, 16000) * 0.1
    for j, n in enumerate(lengths):
        wave[j, n:] = 0
    out = hook({"waveform": wave, "lengths": lengths, "emotion": torch.tensor([0, 1, 2, 0])}, None)
    soft = out["emotion_soft"]
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    assert (soft.max(1).values < 1).any(), "EAM with p=1 mixes"
    assert out["lengths"].tolist() == lengths.tolist()  # EAM keeps lengths
    lam_hook = get_recipe("mll").batch_hook({**cfg, "augment": {"name": "lam", "mode": "on_the_fly"}}, labels)
    out = lam_hook({"waveform": wave, "lengths": lengths, "emotion": torch.tensor([0, 1, 2, 0])}, None)
    assert torch.allclose(out["emotion_soft"].sum(1), torch.ones(4))
    assert build_mixup("none") is None


def test_tiny_end_to_end_variants(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "eam", "mode": "variants", "k": 1, "per_epoch": 1},
                      features={"pool_frames": 2, "frame_norm": "layer"},
                      model={"name": "mll", "proj_dim": 16, "pooling": "flam", "num_heads": 4, "embed_dim": 8,
                             "frame_embed_dim": 8, "dropout": 0.0},
                      objective=MLL_OBJECTIVE,
                      train={"epochs": 3, "batch_size": 8, "eval_batch_size": 5, "optimizer": "adam", "lr": 0.005,
                             "scheduler": "exponential", "lr_decay": 0.875, "decay_epochs": 20})
    res = run_cv(cfg, tmp_path / "run", log=lambda *a: None)
    assert len(res["folds"]) == 3 and 0 <= res["mean"]["ua"] <= 1
    emb = np.load(tmp_path / "run" / "fold0" / "test_embeddings.npy")
    assert emb.shape == (24, 16)
    stores = list((tiny_corpus / "cache").glob("*/*-variants-eam-k1-*"))
    assert stores and (stores[0] / "variants.csv").exists() and not (stores[0] / "audio").exists()
    table = pd.read_csv(stores[0] / "variants.csv")
    assert len(table) == 72 and table["lam"].between(0, 0.5).all()
    # the center-loss centres got their own param group (lr 5e-3)
    logs = pd.read_csv(tmp_path / "run" / "fold0" / "logs" / "metrics.csv")
    assert {"train_kl", "train_focal", "train_center", "train_frame_supcon"} <= set(logs.columns)
    json.loads((tmp_path / "run" / "results.json").read_text())


def test_tiny_variants_with_speaker_normalisation_and_refit(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "eam", "mode": "variants", "k": 1, "per_epoch": 1},
                      features={"normalize": "speaker", "pool_frames": 2, "frame_norm": "layer"},
                      model={"name": "mll", "proj_dim": 16, "pooling": "flam", "num_heads": 4, "embed_dim": 8,
                             "frame_embed_dim": 8, "dropout": 0.0},
                      objective=MLL_OBJECTIVE,
                      train={"epochs": 3, "batch_size": 8, "eval_batch_size": 5, "optimizer": "adam", "lr": 0.005,
                             "refit": True})
    res = run_cv(cfg, tmp_path / "run", log=lambda *a: None)
    assert res["feature_normalisation"].startswith("speaker") and 0 <= res["mean"]["ua"] <= 1
    fold = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    assert 1 <= fold["refit_epochs"] <= 3 and (tmp_path / "run" / "fold0" / "refit").is_dir()


def test_tiny_end_to_end_on_the_fly(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "eam", "mode": "on_the_fly"},
                      features={"source": "waveform"},
                      model={"name": "mll", "proj_dim": 16, "pooling": "mean", "embed_dim": 8, "frame_embed_dim": 8},
                      objective=MLL_OBJECTIVE, protocol={"name": "speaker_kfold", "k": 3, "val_speakers": 1},
                      train={"epochs": 2, "batch_size": 8})
    res = run_cv(cfg, tmp_path / "otf", folds_only=[0], log=lambda *a: None)
    assert len(res["folds"]) == 1


def test_table3_grid_rows_and_table(tiny_corpus, tmp_path):  # noqa: F811
    """configs/ablations/mll.yaml's Table 3: the paper's 13 rows of mixup x pooling x losses, each the config with its
    values' overrides; the table from a finished row's results.json, the others `not run`."""
    from serkit.ablation.spec import load_table, load_tables
    from serkit.ablation.tables import write_table
    from serkit.config import load_config

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "eam", "mode": "variants"}, model={"name": "mll"},
                      objective=MLL_OBJECTIVE)
    base = load_config(cfg)
    table = load_table("configs/ablations/mll.yaml", "mll", base, "table3")
    rows = {r.name: r for r in table.rows}
    assert len(rows) == 13 and table.rows[0].name == "lam-flam-kc" and table.rows[-1].name == "lam-max-kc"
    row = load_config(cfg, rows["eam-flam-kcs"].overrides)
    assert row["augment"]["name"] == "eam" and row["model"]["pooling"] == "flam"
    assert [t["name"] for t in row["objective"]] == ["kl", "center", "frame_supcon"]
    assert row["objective"][1]["weight"] == 0.01  # the config's own center-loss options
    off = load_config(cfg, load_tables("configs/ablations/mll.yaml", "mll", base)["ablation"].rows[0].overrides)
    assert off["augment"]["name"] == "none" and [t["name"] for t in off["objective"]] == ["kl"]
    (tmp_path / "eam-flam-all").mkdir()
    (tmp_path / "eam-flam-all" / "results.json").write_text(json.dumps(
        {"folds": [{"fold": 0, "metrics": {"wa": 0.45, "ua": 0.35}}, {"fold": 1, "metrics": {"wa": 0.55, "ua": 0.45}}],
         "wall_seconds": 12.0}))
    (tmp_path / "eam-flam-all" / "config.yaml").write_text(
        "augment: {name: eam, mode: on_the_fly}\ntrain: {epochs: 7}\n")
    md = write_table(tmp_path, table, "classification", "t")
    assert "| row | mixup | pooling | losses | mode | epochs | folds | WA (%) | UA (%) | wall s |" in md
    assert ("| eam-flam-all | EAM | FLAM | KL+Focal+Center+SupCon | on_the_fly | 7 | 2 (0 1) | 50.00 ± 7.07 | "
            "40.00 ± 7.07 | 12 |") in md
    assert "| lam-flam-kc | LAM | FLAM | KL+Center |  |  |  | not run | not run |  |" in md
    assert (tmp_path / "table3.png").stat().st_size > 0


def test_ablate_draws_a_tsne_plot_of_a_rows_test_embeddings(tiny_corpus, tmp_path):  # noqa: F811
    """`serkit ablate --tsne ROW`: the row's fold-0 test utterances before (pooled features) and after (MLL's
    embedding), with silhouette scores in the table."""
    import yaml

    from serkit.ablation.run import run_rows

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "none"}, objective=MLL_OBJECTIVE,
                      model={"name": "mll", "proj_dim": 16, "pooling": "mean", "embed_dim": 8, "frame_embed_dim": 8},
                      train={"epochs": 1, "batch_size": 8})
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"rows": {"plain": {"set": []}}}))
    md = run_rows(cfg, tmp_path / "abl", folds_only=[0], rows_path=rows, tsne=["plain"], log=lambda *a: None)
    assert (tmp_path / "abl" / "tsne-plain.png").read_bytes()[:4] == b"\x89PNG"
    assert "![t-SNE plain](tsne-plain.png) silhouette before" in md
    assert (tmp_path / "abl" / "ablation.md").read_text() == md


def test_tiny_bf16_training_records_its_precision(tiny_corpus, tmp_path):  # noqa: F811
    """A frame-level recipe trains with ``train.precision: bf16`` (Lightning bf16-mixed on the CPU) and says so."""
    from serkit.train.cv import run_cv

    cfg = tiny_config(tiny_corpus, recipe="mll", augment={"name": "eam", "mode": "variants", "k": 1, "per_epoch": 1},
                      features={"pool_frames": 2, "frame_norm": "layer"},
                      model={"name": "mll", "proj_dim": 16, "pooling": "flam", "num_heads": 4, "embed_dim": 8,
                             "frame_embed_dim": 8, "dropout": 0.0},
                      objective=MLL_OBJECTIVE,
                      train={"epochs": 2, "batch_size": 8, "eval_batch_size": 5, "optimizer": "adam", "lr": 0.005,
                             "precision": "bf16"})
    res = run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    assert res["precision"] == {"features": "fp32", "train": "bf16-mixed"}  # fbank features are always fp32
    fold = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    assert fold["precision"] == res["precision"] and 0 <= fold["metrics"]["ua"] <= 1
    logs = pd.read_csv(tmp_path / "run" / "fold0" / "logs" / "metrics.csv")
    assert np.isfinite(logs["train_loss"].dropna()).all()
    # a finished fold that ran in another precision (e.g. auto resolved elsewhere) is not mixed with new folds
    path = tmp_path / "run" / "fold0" / "result.json"
    path.write_text(json.dumps({**fold, "precision": {"features": "fp32", "train": "32-true"}}))
    from serkit.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
