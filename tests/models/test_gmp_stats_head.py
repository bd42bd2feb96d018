"""GMP-ATL's stats head: the baseline's statistics (masked mean + std per hidden state, standardised), shapes,
padding invariance, weighted vs concatenated layers, the stage model wiring and the AM-softmax embedding width."""

from __future__ import annotations

import pytest
import torch

from serkit.models.gmp_atl import GMPStageModel, StatsHead
from serkit.models.staged_encoder import StagedEncoder
from tests.encoders.tiny import tiny_encoder


def _hidden(b=3, t=9, d=4, layers=3):
    torch.manual_seed(0)
    fm = torch.ones(b, t, dtype=torch.bool)
    fm[1, 5:] = False
    return [torch.randn(b, t, d) for _ in range(layers)], fm


def test_stats_are_masked_mean_std_standardised_and_padding_invariant():
    hidden, fm = _hidden()
    head = StatsHead(4, 3, 5, num_genders=2, dropout=0.0)
    head.train()
    out = head(hidden, fm)
    assert out["logits"].shape == (3, 5) and out["gender_logits"].shape == (3, 2)
    assert out["embedding"].shape == (3, 3 * 8) and head.output_size == 24
    emb = out["embedding"]  # no projection: the standardised statistics themselves (batch statistics in training)
    real = [hidden[0][i, :fm[i].sum()] for i in range(3)]  # layer 0, real frames only
    stats = torch.stack([torch.cat([h.mean(0), h.var(0, unbiased=False).add(1e-5).sqrt()]) for h in real])
    z = (stats - stats.mean(0)) / (stats.var(0, unbiased=False) + head.norm.bn.eps).sqrt()
    torch.testing.assert_close(emb[:, :8], z, atol=1e-4, rtol=1e-4)
    head.eval()
    garbage = [x.clone() for x in hidden]
    for x in garbage:
        x[1, 5:] = 1e3
    torch.testing.assert_close(head(garbage, fm)["logits"], head(hidden, fm)["logits"])


def test_weighted_projection_and_errors():
    hidden, fm = _hidden()
    head = StatsHead(4, 3, 5, weighted=True, proj_dim=6, dropout=0.1)
    out = head(hidden, fm, torch.softmax(torch.zeros(3), 0))
    assert out["embedding"].shape == (3, 6) and "gender_logits" not in out
    out["logits"].sum().backward()
    with pytest.raises(ValueError, match="layer weights"):
        head(hidden, fm)


@pytest.mark.parametrize("layers,width", [("weighted", 2 * 32), ("all", None), ("-1", 2 * 32)])
def test_stage_model_stats_head(layers, width):
    enc = tiny_encoder("whisper")
    n = enc.num_layers
    width = width or 2 * 32 * n
    b, t = 2, 7
    batch = {"features": torch.randn(b, n, t, 32), "frame_mask": torch.ones(b, t, dtype=torch.bool)}
    m1 = GMPStageModel(StagedEncoder(enc, "cache", False), 1, 3, layers=layers, head="stats", proj_dim=0)
    out = m1(batch)
    assert out["logits"].shape == (b, 3) and out["gender_logits"].shape == (b, 2)
    assert out["embedding"].shape == (b, width)
    m3 = GMPStageModel(StagedEncoder(tiny_encoder("whisper"), "cache", "top:1"), 3, 3, layers=layers,
                       head="stats", proj_dim=5, loss="am_softmax")
    out3 = m3(batch)
    assert out3["embedding"].shape == (b, 5) and out3["cosine"].shape == (b, 3)
    out3["cosine"].sum().backward()  # the fine-tuned top block's outputs reach the statistics
    assert any(p.grad is not None for p in m3.encoder.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="head"):
        GMPStageModel(StagedEncoder(tiny_encoder("whisper"), "cache", False), 1, 3, head="mlp")
