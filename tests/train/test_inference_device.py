"""Scoring outside Lightning: on the device asked for (GPU when training used one), module handed back in place."""

from __future__ import annotations

import torch
from torch import nn

from serkit.train.scoring import inference_device, predict_outputs


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch):
        self.seen = batch["x"].device
        return {"logits": self.lin(batch["x"]), "frame_mask": torch.ones(len(batch["x"]), 4)}


class _Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _Tiny()


def test_predict_outputs_device_and_shapes():
    m = _Module()
    loader = [{"x": torch.randn(5, 3), "emotion": torch.zeros(5, dtype=torch.long)},
              {"x": torch.randn(2, 3), "emotion": torch.zeros(2, dtype=torch.long)}]
    out = predict_outputs(m, loader, device="cpu")
    assert set(out) == {"logits"} and out["logits"].shape == (7, 2)  # frame_mask is not an utterance output
    assert m.model.seen.type == "cpu" and next(m.parameters()).device.type == "cpu"
    assert not m.training


def test_inference_device_follows_the_accelerator():
    assert inference_device({"accelerator": "cpu"}).type == "cpu"
    assert inference_device({"accelerator": "auto"}).type == ("cuda" if torch.cuda.is_available() else "cpu")
