"""EncoderDownstream: top-K fine-tuning unfreezes Transformer blocks (not the conv front-end)."""

import torch

from serkit.models.catalog import build_model
from serkit.models.encoder_model import EncoderDownstream
from serkit.models.registry import ModelSpec
from tests.encoders.tiny import tiny_encoder


def _model(family, finetune):
    enc = tiny_encoder(family)
    spec = ModelSpec("classification", 3, enc.num_layers, enc.hidden_size)
    head = build_model(spec, "baseline", proj_dim=8, pooling="mean")
    return EncoderDownstream(enc, head, list(range(enc.num_layers)), finetune)


def test_top_k_unfreezes_transformer_blocks_only():
    for family in ("hubert", "whisper"):
        m = _model(family, "top:1")
        trainable = [n for n, p in m.encoder.named_parameters() if p.requires_grad]
        assert trainable and all("conv" not in n and "feature" not in n for n in trainable), trainable
        assert any(".layers.1." in n or ".layers.1." in n.replace("layer.", "layers.") for n in trainable), trainable


def test_frozen_encoder_gets_no_gradient_and_forward_runs():
    m = _model("hubert", False)
    batch = {"waveform": torch.randn(2, 4000), "lengths": torch.tensor([4000, 3000])}
    out = m(batch)
    out["logits"].sum().backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert out["logits"].shape == (2, 3)
