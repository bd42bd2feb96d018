"""Encoder fine-tuning (``encoder.finetune``): each regime trains what it should and nothing else, through
``serkit cv`` and ``serkit train`` -> ``predict``; a LoRA model folder holds a plain encoder that exports to ONNX."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import yaml

from serkit.cli import main
from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.io import load_tensors
from serkit.models.catalog import build_model
from serkit.models.encoder_model import EncoderDownstream
from serkit.models.finetune import FinetuneOptions, merge_adapters, resolve_finetune
from serkit.models.registry import ModelSpec
from tests.encoders.tiny import tiny_encoder, tiny_encoder_dir
from tests.train.conftest import tiny_config

pytest.importorskip("peft")

#: regime -> (encoder.finetune, train overrides); each regime also exercises one of the options
REGIMES = {
    "full": ({"mode": "full", "gradient_checkpointing": True}, {"precision": "bf16"}),
    "top": ({"mode": "top", "top_k": 1, "layer_decay": 0.5}, {}),
    "lora": ({"mode": "lora", "lora": {"r": 4, "alpha": 8}, "warmup_epochs": 1}, {}),
}


def _ft_config(root, enc_dir, finetune, epochs=2, **train):
    return tiny_config(root, encoder={"id": enc_dir, "layers": "all", "finetune": finetune},
                       features={"source": "waveform", "cache_dir": str(root / "cache-ft")},
                       train={"epochs": epochs, "lr": 0.01, **train},
                       predict={"window_seconds": 1.0, "hop_seconds": 0.5})


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return tiny_encoder_dir("whisper", tmp_path_factory.mktemp("enc") / "tiny-whisper")


def _initial_encoder(enc_dir) -> dict[str, torch.Tensor]:
    from serkit.encoders import load_encoder

    return {k: v.clone() for k, v in load_encoder(enc_dir).state_dict().items()}


def _changed(before: torch.Tensor, after: torch.Tensor) -> bool:
    return not torch.equal(before.float(), after.float())


# -- options ---------------------------------------------------------------------------------------------------------

def test_short_forms_and_defaults_resolve_in_one_place():
    assert resolve_finetune(None) == resolve_finetune(False) == resolve_finetune("frozen") == FinetuneOptions()
    assert resolve_finetune(True).mode == resolve_finetune("full").mode == "full"
    top = resolve_finetune("top:3")
    assert (top.mode, top.top_k) == ("top", 3)
    lora = resolve_finetune({"mode": "lora", "lora": {"r": 2}})
    assert lora.lora["r"] == 2 and lora.lora["alpha"] == 16.0 and "q_proj" in lora.lora["target_modules"]
    assert (lora.layer_decay, lora.warmup_epochs, lora.gradient_checkpointing) == (1.0, 0, False)


@pytest.mark.parametrize("value, key", [
    ({"mode": "adapters"}, "encoder.finetune.mode"),
    ({"mode": "top"}, "encoder.finetune.top_k"),
    ({"mode": "top", "top_k": 0}, "encoder.finetune.top_k"),
    ({"mode": "full", "layer_decay": 1.5}, "encoder.finetune.layer_decay"),
    ({"mode": "full", "warmup_epochs": -1}, "encoder.finetune.warmup_epochs"),
    ({"mode": "full", "gradient_checkpointing": "yes"}, "encoder.finetune.gradient_checkpointing"),
    ({"mode": "lora", "lora": {"r": 0}}, "encoder.finetune.lora.r"),
    ({"mode": "lora", "lora": {"rank": 4}}, "encoder.finetune.lora.rank"),
    ({"mode": "lora", "lora": {"target_modules": []}}, "encoder.finetune.lora.target_modules"),
    ({"mode": "full", "decay": 0.9}, "encoder.finetune.decay"),
    ("top:x", "encoder.finetune"),
])
def test_a_wrong_setting_is_a_one_line_error_naming_the_key(tiny_corpus, value, key):
    cfg = tiny_config(tiny_corpus, encoder={"id": "fbank-40", "finetune": value}, features={"source": "waveform"})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(cfg)
    assert "\n" not in str(err.value)


def test_a_trained_encoder_needs_the_encoder_in_the_loop(tiny_corpus, tmp_path, capsys):
    cfg = tiny_config(tiny_corpus, encoder={"id": "fbank-40", "finetune": {"mode": "lora"}})
    with pytest.raises(ConfigError, match="features.source: waveform"):
        load_config(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_corpus, encoder={"id": "fbank-40", "finetune": {"mode": "x"}},
                                               features={"source": "waveform"})))
    assert main(["cv", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "encoder.finetune.mode" in capsys.readouterr().err


# -- the mechanism on a tiny encoder ---------------------------------------------------------------------------------

def _loop_model(family, finetune, adapters=True):
    enc = tiny_encoder(family)
    spec = ModelSpec("classification", 3, enc.num_layers, enc.hidden_size)
    head = build_model(spec, "baseline", proj_dim=8, pooling="mean", dropout=0.0)
    return EncoderDownstream(enc, head, list(range(enc.num_layers)), finetune, adapters=adapters)


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"waveform": torch.randn(2, 8000, generator=g), "lengths": torch.tensor([8000, 6000])}


def test_a_pooled_head_gets_the_statistics_the_cache_stores():
    from serkit.features.pooling import pooled_statistics
    from serkit.models.encoder_model import masked_pooled_statistics

    feats = torch.randn(2, 3, 7, 4)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    pooled = masked_pooled_statistics(feats, mask)
    torch.testing.assert_close(pooled[0], pooled_statistics(feats[0]))
    torch.testing.assert_close(pooled[1], pooled_statistics(feats[1, :, :5]))
    enc = tiny_encoder("whisper")
    spec = ModelSpec("classification", 3, enc.num_layers, enc.hidden_size)
    head = build_model(spec, "pooled_mlp", layers="all", hidden=[], dropout=0.0)
    m = EncoderDownstream(enc, head, list(range(enc.num_layers)), "lora", adapters=True).train()
    m(_batch())["logits"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in m.encoder.named_parameters()
               if p.requires_grad)


def test_input_operations_fitted_on_cached_features_are_refused_with_the_encoder_in_the_loop():
    enc = tiny_encoder("whisper")
    spec = ModelSpec("classification", 3, enc.num_layers, enc.hidden_size, num_speakers=2)
    head = build_model(spec, "hcld", dim=4, extractor_opts={"cnn": {"channels": [4]}}, input_norm="standardize")
    with pytest.raises(ConfigError, match="features.source: cache"):
        EncoderDownstream(enc, head, list(range(enc.num_layers)), "lora", adapters=True)

def test_warm_up_epochs_train_the_head_alone():
    m = _loop_model("whisper", {"mode": "full", "warmup_epochs": 2}).train()
    m.set_epoch(1)
    assert not m.encoder.training and m.downstream.training
    m(_batch())["logits"].sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.downstream.parameters() if p.requires_grad)
    m.set_epoch(2)
    assert m.encoder.training
    m(_batch())["logits"].sum().backward()
    assert all(p.grad is not None for n, p in m.encoder.named_parameters() if n != "mask_embedding")


def test_layer_decay_scales_each_block_and_the_front_end():
    m = _loop_model("hubert", {"mode": "full", "layer_decay": 0.5})
    groups = m.param_groups(1.0, 0.1)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    enc = m.encoder.model
    assert lr_of[id(enc.encoder.layers[1].attention.q_proj.weight)] == 0.5
    assert lr_of[id(enc.encoder.layers[0].attention.q_proj.weight)] == 0.25
    assert lr_of[id(enc.feature_extractor.conv_layers[0].conv.weight)] == 0.125
    assert all(lr_of[id(p)] == 1.0 for p in m.downstream.parameters())
    assert len(lr_of) == sum(1 for p in m.parameters() if p.requires_grad)
    plain = _loop_model("hubert", {"mode": "full"}).param_groups(1.0, 0.1)
    assert len(plain) == 1  # no decay: the one group every other model gets


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_gradient_checkpointing_gives_the_same_gradients(family):
    grads = []
    for gc in (False, True):
        m = _loop_model(family, {"mode": "lora", "lora": {"r": 2}, "gradient_checkpointing": gc}).train()
        with torch.no_grad():
            for n, p in m.encoder.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
        m(_batch())["logits"].sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.encoder.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["whisper", "hubert", "wavlm"])
def test_lora_trains_adapters_only_and_merges_into_a_plain_encoder(family):
    m = _loop_model(family, {"mode": "lora", "lora": {"r": 2}})
    trainable = [n for n, p in m.encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    if family == "wavlm":  # its attention reads q/k/v/out as tensors: only the feed-forward can carry adapters
        assert not any("attention" in n for n in trainable)
    with torch.no_grad():
        for n, p in m.encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    m.eval()
    plain = _loop_model(family, {"mode": "lora"}, adapters=False).eval()
    with torch.no_grad():
        adapted = m(_batch())["logits"]
        merge_adapters(m)
        assert set(m.state_dict()) == set(plain.state_dict())
        assert _changed(plain(_batch())["logits"], adapted)  # the adapters changed what it computes
        plain.load_state_dict(m.state_dict())
        torch.testing.assert_close(plain(_batch())["logits"], adapted, rtol=1e-4, atol=1e-5)


# -- serkit cv / train / predict / export ----------------------------------------------------------------------------

@pytest.mark.parametrize("regime", list(REGIMES))
def test_cv_fine_tunes_what_the_regime_names(tiny_corpus, whisper_dir, tmp_path, regime):
    finetune, train = REGIMES[regime]
    cfg = _ft_config(tiny_corpus, whisper_dir, finetune, **train)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cv"
    assert main(["cv", str(path), "--out", str(out), "--folds", "0"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["folds"]) == 1 and 0 <= res["folds"][0]["metrics"]["ua"] <= 1
    state = load_tensors(out / "fold0" / "checkpoints" / "last.ckpt")["state_dict"]
    enc = {k.removeprefix("model.encoder."): v for k, v in state.items() if k.startswith("model.encoder.")}
    init = _initial_encoder(whisper_dir)
    block = "encoder.layers.{}.fc1.weight"
    if regime == "full":
        assert _changed(init["encoder.conv1.weight"], enc["encoder.conv1.weight"])
        assert _changed(init[block.format(0)], enc[block.format(0)])
    elif regime == "top":
        assert not _changed(init["encoder.conv1.weight"], enc["encoder.conv1.weight"])
        assert not _changed(init[block.format(0)], enc[block.format(0)])  # the lower block stays as loaded
        assert _changed(init[block.format(1)], enc[block.format(1)])
        assert _changed(init["encoder.layer_norm.weight"], enc["encoder.layer_norm.weight"])
    else:
        base = {k.replace(".base_layer", ""): v for k, v in enc.items() if "lora_" not in k}
        assert base.keys() == init.keys()
        assert all(not _changed(init[k], base[k]) for k in init)  # every base weight as loaded
        lora_b = [v for k, v in enc.items() if "lora_B" in k]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # initialised to zero, then trained


@pytest.mark.parametrize("regime", list(REGIMES))
def test_train_predict_and_export_a_fine_tuned_encoder(tiny_corpus, whisper_dir, tmp_path, regime):
    from safetensors.torch import load_file

    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    finetune, train = REGIMES[regime]
    finetune = {**finetune, "warmup_epochs": 0}  # the refit may run one epoch: the encoder trains in it
    model_dir = train_final(_ft_config(tiny_corpus, whisper_dir, finetune, **train), tmp_path / "model",
                            log=lambda *a: None)
    weights = load_file(str(model_dir / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    init = _initial_encoder(whisper_dir)
    fc1 = "encoder.encoder.layers.1.fc1.weight"
    assert _changed(init[fc1.removeprefix("encoder.")], weights[fc1])  # the fine-tuned (merged) top block saved
    rec = Recognizer.from_pretrained(model_dir)
    files = sorted((tiny_corpus / "spk1").glob("*.wav"))[:3]
    out = rec.predict_files(files)
    assert len(out) == 3 and all(o["label"] in ("low", "mid", "high") for o in out)
    probs = np.array([list(o["probabilities"].values()) for o in out])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    if importlib.util.find_spec("onnxruntime") is None:
        return
    from serkit.inference.onnx import OnnxRecognizer

    assert main(["export", str(model_dir), "--format", "onnx"]) == 0  # the export checks torch against the graph
    onnx_probs = np.array([list(o["probabilities"].values())
                           for o in OnnxRecognizer.from_folder(model_dir, threads=1).predict_files(files)])
    assert np.abs(onnx_probs - probs).max() <= 1e-3


@pytest.mark.parametrize("level", ["frames", "pooled"])
def test_lora_model_exports_to_onnx_within_tolerance(tiny_corpus, whisper_dir, tmp_path, level):
    """A frame-level head, and the pooled head of the baselines (its statistics computed in the loop)."""
    pytest.importorskip("onnxruntime")
    from serkit.inference import Recognizer
    from serkit.inference.onnx import OnnxRecognizer
    from serkit.train.final import train_final

    finetune = {"mode": "lora", "lora": {"r": 4, "alpha": 8}}
    cfg = _ft_config(tiny_corpus, whisper_dir, finetune, epochs=1)
    if level == "pooled":
        cfg["features"]["level"] = "pooled"
        cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0, "input_norm": "batchnorm"}
        cfg["features"]["layers"] = "all"
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    assert main(["export", str(model_dir), "--format", "onnx"]) == 0
    files = sorted((tiny_corpus / "spk4").glob("*.wav"))
    torch_out = Recognizer.from_pretrained(model_dir).predict_files(files)
    onnx_out = OnnxRecognizer.from_folder(model_dir, threads=1).predict_files(files)
    diff = max(np.abs(np.array(list(a["probabilities"].values())) - np.array(list(b["probabilities"].values()))).max()
               for a, b in zip(torch_out, onnx_out, strict=True))
    assert diff <= 1e-3


@pytest.mark.parametrize("regime", ["full", "top", "lora"])
def test_sigkilled_fine_tuning_cv_resumes_to_the_uninterrupted_result(tiny_corpus, whisper_dir, tmp_path, regime):
    """Killed in the middle of an epoch that trains the encoder (LoRA: after the head's warm-up, with dropout in the
    adapters; every regime with dropout in the head): the resumed run gives the uninterrupted run's figures and
    predictions."""
    from serkit.train.cv import run_cv
    from tests.train.test_resume import FOLD, _figures, _killed_run

    finetune = {
        "full": {"mode": "full"},
        "top": {"mode": "top", "top_k": 1, "layer_decay": 0.8},
        "lora": {"mode": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "warmup_epochs": 1, "layer_decay": 0.8},
    }[regime]
    # One thread in the killed process and in this one: a different count changes float sums in the last digits,
    # and this process's count is whatever earlier tests left (importing silero sets one thread).
    cfg = _ft_config(tiny_corpus, whisper_dir, finetune, epochs=3, patience=5, threads=1)
    cfg["model"]["dropout"] = 0.3
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    reference = tmp_path / "reference"
    run_cv(cfg, reference, folds_only=[FOLD], log=lambda *a: None)
    out = tmp_path / "killed"
    _killed_run(cfg_path, out, f"fold{FOLD}", 2, 1)
    assert (out / f"fold{FOLD}" / "checkpoints" / "last.ckpt").exists()
    assert not (out / f"fold{FOLD}" / "result.json").exists()
    run_cv(cfg_path, out, folds_only=[FOLD], log=lambda *a: None)
    assert _figures(out) == _figures(reference)
    resumed = json.loads((out / "results.json").read_text())["folds"][0]["resumed"]
    assert [r["epoch"] for r in resumed] == [1]
