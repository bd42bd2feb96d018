"""GMP-ATL: forward_from equality, staged encoder, pseudo-label shapes, three stages end to end, stage resumption."""

import json

import numpy as np
import pytest
import torch

from serkit.errors import ConfigError
from serkit.models.gmp_atl import GMPStageModel
from serkit.models.staged_encoder import StagedEncoder
from serkit.recipes.gmp_atl import gmp_options
from tests.encoders.tiny import FAMILIES, tiny_encoder
from tests.encoders.tiny import tiny_config as tiny_encoder_config
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_from_equals_forward(family):
    enc = tiny_encoder(family)
    waves = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6400]) if enc.padding_invariant else None
    with torch.no_grad():
        full = enc(waves, lengths)
        m = full.frame_mask[..., None]
        for i in range(enc.num_layers - 1):
            part = enc.forward_from(full.hidden_states[i], i, full.frame_mask)
            assert len(part.hidden_states) == enc.num_layers - i
            for j, h in enumerate(part.hidden_states):
                assert torch.allclose(h * m, full.hidden_states[i + j] * m, atol=1e-5), (family, i, j)


def test_whisper_forward_from_masking_matches_forward_at_input():
    enc = tiny_encoder("whisper")
    torch.nn.init.normal_(enc.mask_embedding)
    waves, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        full = enc(waves, lengths)
        mask = torch.zeros_like(full.frame_mask)
        mask[:, 3:9] = True
        masked = enc(waves, lengths, mask_time_indices=mask)
        h0 = full.hidden_states[0]
        part = enc.forward_from(h0, 0, full.frame_mask, mask_time_indices=mask)
        m = full.frame_mask[..., None]
        assert torch.allclose(part.hidden_states[-1] * m, masked.hidden_states[-1] * m, atol=1e-5)
        deeper = enc.forward_from(full.hidden_states[1], 1, full.frame_mask, mask_time_indices=mask)
        assert not torch.allclose(deeper.hidden_states[-1][0, 3], deeper.hidden_states[-1][0, 4])  # positions kept


@pytest.mark.parametrize("family", ["whisper", "hubert-layer", "wavlm"])
def test_staged_encoder_top_k_from_cache(family):
    enc = tiny_encoder(family)
    waves = torch.randn(2, 6400)
    with torch.no_grad():
        full = enc(waves)
    runner = StagedEncoder(enc, "cache", "top:1")
    assert runner.first_layer == enc.num_layers - 2
    trainable = {n for n, p in runner.named_parameters() if p.requires_grad}
    assert trainable and all(("layers.1." in n or "layer.1." in n or "norm" in n or "mask" in n) for n in trainable)
    runner.eval()
    batch = {"features": full.hidden_states[runner.first_layer][:, None], "frame_mask": full.frame_mask}
    out = runner(batch)
    assert torch.allclose(out.hidden_states[-1], full.hidden_states[-1], atol=1e-5)
    frozen = StagedEncoder(tiny_encoder(family), "cache", False)
    assert frozen.first_layer == enc.num_layers - 1 and not frozen.trains


def _stage2_batch(enc, b=3, t=20):
    fm = torch.ones(b, t, dtype=torch.bool)
    fm[2, 15:] = False
    pseudo = torch.full((b, 2, 25), -1, dtype=torch.long)
    pseudo[:, 0, :t] = torch.randint(0, 4, (b, t))
    pseudo[:, 1, :t] = torch.randint(0, 16, (b, t))
    return {"features": torch.randn(b, enc.num_layers, t, 32), "frame_mask": fm, "pseudo": pseudo,
            "emotion": torch.tensor([0, 1, 2])}


def test_stage2_pseudo_label_shapes_and_loss():
    from serkit.losses.pseudo_label import PseudoLabelCE

    enc = tiny_encoder("whisper")
    b, t = 3, 20
    full = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 2, 3, hidden=8, ks=(4, 16), min_masks=2, span=3,
                         masked_only=False).train()
    batch = _stage2_batch(enc, b, t)
    torch.manual_seed(1)
    out = full(batch)
    assert {k: tuple(v.shape) for k, v in out["pseudo_logits"].items()} == {4: (b, t, 4), 16: (b, t, 16)}
    assert {k: tuple(v.shape) for k, v in out["pseudo_labels"].items()} == {4: (b, t), 16: (b, t)}
    span = out["span_mask"]
    assert span.any() and not (span & ~batch["frame_mask"]).any()
    loss_full = PseudoLabelCE()(out, {**batch, "pseudo_labels": out["pseudo_labels"]})

    # masked_only: the heads run on the masked real frames alone, and the masked-prediction loss is the same
    masked = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 2, 3, hidden=8, ks=(4, 16), min_masks=2, span=3)
    masked.load_state_dict(full.state_dict())
    masked.train()
    torch.manual_seed(1)
    out = masked(batch)
    n = int(span.sum())
    assert {k: tuple(v.shape) for k, v in out["pseudo_logits"].items()} == {4: (n, 4), 16: (n, 16)}
    assert {k: tuple(v.shape) for k, v in out["pseudo_labels"].items()} == {4: (n,), 16: (n,)}
    loss = PseudoLabelCE()(out, batch)
    torch.testing.assert_close(loss, loss_full)
    loss.backward()
    assert torch.isfinite(loss) and masked.encoder.encoder.mask_embedding.grad is not None
    masked.eval()
    with torch.no_grad():
        assert all(v.shape[0] == 0 for v in masked(batch)["pseudo_logits"].values())


def test_frozen_layers_from_pooled_statistics_equal_their_frames():
    """Stages 2 and 3 from the cache read the frozen layers' statistics from ``pooled`` and only the blocks' input
    as frames: the stats head's outputs and stage 2's probe are those computed from every layer's frames."""
    from serkit.features.pooling import pooled_statistics

    enc = tiny_encoder("whisper")
    torch.manual_seed(0)
    b, t = 3, 9
    frames = torch.randn(b, enc.num_layers, t, enc.hidden_size)
    fm = torch.ones(b, t, dtype=torch.bool)
    pooled = torch.stack([pooled_statistics(f) for f in frames])
    for stage, kw in ((3, {"head": "stats", "proj_dim": 4}), (2, {"ks": (4,), "hidden": 8})):
        model = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), stage, 3, layers="all", **kw).eval()
        first = model.encoder.first_layer
        with torch.no_grad():
            want = model({"features": frames, "frame_mask": fm})
            got = model({"features": frames[:, first:first + 1], "pooled": pooled, "frame_mask": fm})
        torch.testing.assert_close(got["logits"], want["logits"], atol=1e-3, rtol=1e-3)
    bilstm = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 3, 3, layers="all", head="bilstm", hidden=4,
                           proj_dim=4)
    with pytest.raises(ValueError, match="BiLSTM head reads the frames"):
        bilstm({"features": frames[:, first:first + 1], "pooled": pooled, "frame_mask": fm})


def _save_tiny(family, path):
    import transformers

    torch.manual_seed(0)
    cfg = tiny_encoder_config(family)
    model = (transformers.WhisperForAudioClassification(cfg) if family == "whisper"
             else transformers.AutoModel.from_config(cfg))
    model.save_pretrained(str(path))
    return str(path)


def _gmp_cfg(root, enc_dir, source, **ro):
    cfg = tiny_config(root, name=f"gmp-{source}", recipe="gmp_atl",
                      encoder={"id": enc_dir, "layers": "all"}, features={"source": source,
                                                                          "cache_dir": str(root / "cache")},
                      train={"epochs": 2, "batch_size": 8, "lr": 0.005, "patience": 5, "progress": False})
    cfg["model"] = {"name": "none"}
    cfg["recipe_options"] = {"stage1": {"hidden": 8, "proj_dim": 8},
                             "cluster": {"layer": -3, "ks": [4, 8], "niter": 5, "max_points_per_centroid": 64},
                             "stage2": {"hidden": 8, "span": 3, "finetune": "top:1"},
                             "stage3": {"hidden": 8, "proj_dim": 8, "finetune": "top:1", "init_head": True}, **ro}
    return cfg


def test_three_stages_from_cache_and_resume(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    enc_dir = _save_tiny("whisper", tmp_path / "tiny-whisper")
    cfg = _gmp_cfg(tiny_corpus, enc_dir, "cache", stage_root=str(tmp_path / "stages"))
    summary = run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    res = summary["folds"][0]
    assert 0.0 <= res["metrics"]["ua"] <= 1.0
    fold_root = tmp_path / "stages" / "fold0"
    # the report's learning curves come from each training stage's own log
    from serkit.report import fold_work_dirs

    assert [label for label, _ in fold_work_dirs(tmp_path / "run", summary)] == \
        ["fold0/stage1", "fold0/stage2", "fold0/stage3"]
    assert "## Learning curves" in (tmp_path / "run" / "report.md").read_text()
    dirs = sorted(p.name.split("-")[0] for p in fold_root.iterdir())
    assert dirs == ["gmps", "stage1", "stage2", "stage3"]
    for d in fold_root.iterdir():
        marker = json.loads((d / "stage.json").read_text())
        assert not (d / "checkpoints").exists()
        assert all((d / f).exists() for f in marker["files"])
        if d.name.startswith("stage1"):  # frozen encoder in stage 1 here: only its head is kept
            from safetensors.torch import load_file

            assert not any(k.startswith("encoder.") for k in load_file(str(d / "state.safetensors")))
    gmp = next(fold_root.glob("gmps-*"))
    with np.load(gmp / "arrays.npz") as z:
        arrs = [z[k] for k in z.files]
    n_train = json.loads((tmp_path / "run" / "folds.json").read_text())
    assert len(arrs) == len(n_train[0]["train"] if isinstance(n_train, list) else n_train["folds"][0]["train"])
    assert all(a.shape[0] == 2 and a[0].max() < 4 and a[1].max() < 8 for a in arrs)
    # a second run (new output folder, same stages; another progress setting, which cannot change results) trains
    # nothing: every stage is reused from its marker
    before = {p: p.stat().st_mtime for p in fold_root.rglob("state.safetensors")}
    cfg2 = {**cfg, "name": "again", "train": {**cfg["train"], "progress": not cfg["train"].get("progress", True)}}
    summary2 = run_cv(cfg2, tmp_path / "run2", folds_only=[0], log=lambda *a: None)
    assert summary2["folds"][0]["metrics"] == res["metrics"]
    assert {p: p.stat().st_mtime for p in fold_root.rglob("state.safetensors")} == before
    # the no-GMP row shares stage 1 and adds one stage 3
    cfg3 = _gmp_cfg(tiny_corpus, enc_dir, "cache", stage_root=str(tmp_path / "stages"), stages=[1, 3])
    run_cv(cfg3, tmp_path / "run3", folds_only=[0], log=lambda *a: None)
    assert len(list(fold_root.glob("stage1-*"))) == 1 and len(list(fold_root.glob("stage3-*"))) == 2


def test_run_killed_after_stage1_resumes_to_the_uninterrupted_result(tiny_corpus, tmp_path):  # noqa: F811
    """Uninterrupted, stage 1 builds the first model of the fold (and loads the encoder); resumed with stage 1 and
    the GMPs finished, stage 2 is the first. Its initial weights, and so stages 2 and 3, must not depend on that."""
    import shutil

    import transformers
    from safetensors.torch import load_file

    from serkit.train.cv import run_cv

    torch.manual_seed(0)  # a full Whisper checkpoint, as on the hub: loading its encoder builds fresh modules
    transformers.WhisperForConditionalGeneration(tiny_encoder_config("whisper")).save_pretrained(str(tmp_path / "w"))
    cfg = _gmp_cfg(tiny_corpus, str(tmp_path / "w"), "cache")
    whole = run_cv(cfg, tmp_path / "whole", folds_only=[0], log=lambda *a: None)
    resumed_dir = tmp_path / "resumed" / "fold0"
    resumed_dir.mkdir(parents=True)
    for d in (tmp_path / "whole" / "fold0").iterdir():  # killed after the clustering step
        if d.is_dir() and d.name.split("-")[0] in ("stage1", "gmps"):
            shutil.copytree(d, resumed_dir / d.name)
    resumed = run_cv(cfg, tmp_path / "resumed", folds_only=[0], log=lambda *a: None)
    for name in ("stage2", "stage3"):
        a = load_file(str(next((tmp_path / "whole" / "fold0").glob(f"{name}-*")) / "state.safetensors"))
        b = load_file(str(next(resumed_dir.glob(f"{name}-*")) / "state.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["folds"][0]["metrics"] == whole["folds"][0]["metrics"]


def test_three_stages_waveform_hubert_full_finetuning(tiny_corpus, tmp_path):  # noqa: F811
    from serkit.train.cv import run_cv

    enc_dir = _save_tiny("hubert-layer", tmp_path / "tiny-hubert")
    cfg = _gmp_cfg(tiny_corpus, enc_dir, "waveform")
    cfg["recipe_options"]["stage1"]["finetune"] = True
    cfg["recipe_options"]["stage2"]["finetune"] = True
    cfg["recipe_options"]["stage3"]["finetune"] = True
    cfg["recipe_options"]["cluster"]["layer"] = -2
    cfg["train"]["epochs"] = 1
    run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    res = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    assert set(res["stage_metrics"]) == {"stage1", "stage3"}
    gmp = json.loads(next((tmp_path / "run" / "fold0").glob("gmps-*/stage.json")).read_text())
    assert gmp["from_stage1"]  # the fine-tuned stage-1 encoder gives the clustered frames


def test_options_checked():
    from serkit.errors import ConfigError

    with pytest.raises(ConfigError):
        gmp_options({"recipe_options": {"stages": [2, 3]}})
    with pytest.raises(ConfigError):
        gmp_options({"recipe_options": {"stage3": {"loss": "focal"}}})
    assert gmp_options({}).cluster.ks == [64, 512, 4096]
    with pytest.raises(ConfigError, match="bogus"):
        gmp_options({"recipe_options": {"stage1": {"bogus": 1}}})


def test_table3_and_table4_rows_share_the_stage_root(tmp_path, monkeypatch):
    """configs/ablations/gmp_atl.yaml's Tables 3 / 4: GMPs x stage-3 loss and the clustering layer; every row runs
    with one stage root, DIR/stages (run_cv stubbed: no training)."""
    from serkit.ablation.run import run_rows
    from serkit.config import load_config

    seen = {}

    def fake_run_cv(config, out, overrides, folds_only=None, log=print):
        seen[out.name] = load_config(config, overrides)
        return {"mean": {"ua": 0.5}, "std": {"ua": 0.0}, "folds": []}

    monkeypatch.setattr("serkit.train.cv.run_cv", fake_run_cv)
    run_rows("configs/ravdess/gmp-atl.yaml", tmp_path, table="table3", log=lambda *a: None)
    run_rows("configs/ravdess/gmp-atl.yaml", tmp_path, ["layer-5"], table="table4", log=lambda *a: None)
    assert sorted(seen) == ["gmp-ams", "gmp-ce", "layer-5", "no_gmp-ams", "no_gmp-ce"]
    ro = {name: cfg["recipe_options"] for name, cfg in seen.items()}
    assert ro["no_gmp-ce"]["stages"] == [1, 3] and ro["no_gmp-ce"]["stage3"]["loss"] == "cross_entropy"
    assert ro["gmp-ams"]["stages"] == [1, 2, 3] and ro["gmp-ams"]["stage3"]["loss"] == "am_softmax"
    assert ro["layer-5"]["cluster"]["layer"] == -5 and ro["gmp-ams"]["cluster"]["layer"] == -3
    assert {r["stage_root"] for r in ro.values()} == {str(tmp_path / "stages")}
    for cfg in seen.values():
        gmp_options(cfg)
    assert "| gmp-ams | ✓ | AMS |" in (tmp_path / "table3.md").read_text()


def test_stage_keys_ignore_result_neutral_settings():
    from serkit.train.stages import schedule as _schedule

    t = {"epochs": 3, "lr": 1e-4, "num_workers": 8, "progress": False}
    assert _schedule(t) == _schedule({**t, "num_workers": 0, "progress": True}) == {"epochs": 3, "lr": 1e-4}
    assert _schedule(t) != _schedule({**t, "lr": 1e-3})


def test_stats_head_stages_from_cache_init_head(tiny_corpus, tmp_path):  # noqa: F811
    """``head: stats`` in stages 1 and 3 (the baseline's head family): stage 3 starts from stage 1's standardisation,
    projection and class directions (AM-softmax), and its statistics include the fine-tuned top block's outputs."""
    from safetensors.torch import load_file

    from serkit.train.cv import run_cv

    enc_dir = _save_tiny("whisper", tmp_path / "tiny-whisper")
    cfg = _gmp_cfg(tiny_corpus, enc_dir, "cache", stage_root=str(tmp_path / "stages"), stages=[1, 3])
    cfg["features"]["normalize"] = "speaker"
    ro = cfg["recipe_options"]
    ro["stage1"].update(head="stats", dropout=0.1, class_weights="balanced")
    ro["stage3"].update(head="stats", dropout=0.1)
    cfg["train"]["group_by_length"] = 2
    seen = {}
    from serkit.recipes.gmp_atl import GMPATLRecipe

    load = GMPATLRecipe._load

    def spy(ctx, model, upstream, heads):
        load(ctx, model, upstream, heads)
        if heads:
            seen["am"] = model.am.weight.detach().clone()
            seen["mean"] = model.head.norm.bn.running_mean.detach().clone()

    GMPATLRecipe._load = staticmethod(spy)
    try:
        run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    finally:
        GMPATLRecipe._load = staticmethod(load)
    res = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    assert set(res["stage_metrics"]) == {"stage1", "stage3"}
    # stage 1 reads pooled statistics (nothing to group); stage 3 the blocks' input frames, in length groups
    assert res["batching"] == {"stage1": "shuffled", "stage3": "length-grouped (groups of 2 batches)"}
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["folds"][0]["batching"] == res["batching"]
    s1 = load_file(str(next((tmp_path / "stages" / "fold0").glob("stage1-*")) / "state.safetensors"))
    assert {"head.emotion.weight", "head.gender.weight", "head.projection.weight", "head.norm.bn.running_mean"} \
        <= set(s1)
    assert not any(k.startswith("head.lstm") for k in s1)
    torch.testing.assert_close(seen["am"], s1["head.emotion.weight"])
    torch.testing.assert_close(seen["mean"], s1["head.norm.bn.running_mean"])


def test_head_options_checked_and_bilstm_keys_kept():
    from serkit.recipes.gmp_atl_options import stage_key

    with pytest.raises(ConfigError, match="head"):
        gmp_options({"recipe_options": {"stage1": {"head": "mlp"}}})
    with pytest.raises(ConfigError, match="same head"):
        gmp_options({"recipe_options": {"stage1": {"head": "stats"}, "stage3": {"init_head": True}}})
    gmp_options({"recipe_options": {"stages": [1], "stage1": {"head": "stats"}, "stage3": {"init_head": True}}})
    with pytest.raises(ConfigError, match="class_weights"):
        gmp_options({"recipe_options": {"stage1": {"class_weights": "inverse"}}})
    o = gmp_options({})
    # stages trained before the head option existed keep their keys (and are reused)
    assert set(stage_key(o.stage1)) == {"finetune", "hidden", "proj_dim", "alpha"}
    assert "dropout" in stage_key(gmp_options({"recipe_options": {"stage1": {"head": "stats"}}}).stage1)


def test_refit_retrains_only_the_last_stage(tiny_corpus, tmp_path):  # noqa: F811
    """``train.refit: true``: stage 3 (the scored stage) is retrained on train + validation for the epoch count
    validation chose; stage 1 keeps its validation-chosen checkpoint, so stage 3 is selected on unseen speakers."""
    from serkit.train.cv import run_cv

    enc_dir = _save_tiny("whisper", tmp_path / "tiny-whisper")
    cfg = _gmp_cfg(tiny_corpus, enc_dir, "cache", stage_root=str(tmp_path / "stages"), stages=[1, 3])
    cfg["train"]["refit"] = True
    ro = cfg["recipe_options"]
    ro["stage1"].update(head="stats", dropout=0.1)
    ro["stage3"].update(head="stats", dropout=0.1)
    run_cv(cfg, tmp_path / "run", folds_only=[0], log=lambda *a: None)
    stages = tmp_path / "stages" / "fold0"
    assert (next(stages.glob("stage1-*")) / "stage.json").exists()
    s1, s3 = next(stages.glob("stage1-*")), next(stages.glob("stage3-*"))
    assert not (s1 / "refit").exists() and "refit_epochs" not in json.loads((s1 / "stage.json").read_text())
    marker = json.loads((s3 / "stage.json").read_text())
    assert (s3 / "refit").is_dir() and marker["refit_epochs"] == marker["best_epoch"] + 1
    res = json.loads((tmp_path / "run" / "fold0" / "result.json").read_text())
    assert res["refit_epochs"] == marker["refit_epochs"]
    # stages: [1] refits stage 1, the last stage then
    ro["stages"] = [1]
    run_cv(cfg, tmp_path / "run1", folds_only=[0], log=lambda *a: None)
    assert "refit_epochs" in json.loads((tmp_path / "run1" / "fold0" / "result.json").read_text())
    # stage 1 read pooled statistics (frozen encoder, stats head), also in the refit on train + validation
    from serkit.recipes.gmp_atl import GMPATLRecipe

    seen = []
    hook = GMPATLRecipe._pooled_datasets

    def spy(self, ctx, labels):
        out = hook(self, ctx, labels)
        seen.append((len(out[0]), out[0][0].keys()))
        return out

    GMPATLRecipe._pooled_datasets = spy
    try:
        run_cv(cfg, tmp_path / "run2", folds_only=[0], log=lambda *a: None)
    finally:
        GMPATLRecipe._pooled_datasets = hook
    folds = json.loads((tmp_path / "run2" / "folds.json").read_text())
    assert len(seen) == 2 and all("pooled" in keys for _, keys in seen)
    assert seen[1][0] == seen[0][0] + len(folds[0]["val"])  # the refit trains on train + validation


def test_stats_head_from_pooled_statistics_equals_from_frames():
    """Stage 1 on a frozen encoder reads the cache's pooled statistics: the stats head gives the outputs it gives
    on the frames those statistics came from."""
    from serkit.features.pooling import pooled_statistics

    enc = tiny_encoder("whisper")
    model = GMPStageModel(StagedEncoder(enc, "cache", False), 1, 3, layers="all", head="stats", proj_dim=4,
                          dropout=0.1).eval()
    frames = torch.randn(2, enc.num_layers, 7, enc.hidden_size)
    with torch.no_grad():
        from_frames = model({"features": frames, "frame_mask": torch.ones(2, 7, dtype=torch.bool)})
        pooled = torch.stack([pooled_statistics(f) for f in frames])
        from_pooled = model({"pooled": pooled})
    for k in ("logits", "gender_logits", "embedding"):
        torch.testing.assert_close(from_pooled[k], from_frames[k], atol=1e-3, rtol=1e-3)
    trained = GMPStageModel(StagedEncoder(enc, "cache", "top:1"), 3, 3, layers="all", head="stats", proj_dim=4)
    with pytest.raises(ValueError, match="frozen encoder"):
        trained({"pooled": pooled})
