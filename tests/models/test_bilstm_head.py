"""BiLSTM head: output keys and shapes, padding does not change an utterance's outputs."""

from __future__ import annotations

import torch

from serkit.models.bilstm_head import BiLSTMHead


def test_shapes_and_padding_invariance():
    torch.manual_seed(0)
    head = BiLSTMHead(input_dim=6, hidden=5, num_classes=4, num_genders=2, proj_dim=7).eval()
    x = torch.randn(2, 9, 6)
    fm = torch.ones(2, 9, dtype=torch.bool)
    fm[1, 4:] = False
    out = head(x, fm)
    assert out["logits"].shape == (2, 4) and out["gender_logits"].shape == (2, 2)
    assert out["embedding"].shape == (2, 7)
    garbage = x.clone()
    garbage[1, 4:] = 1e3
    torch.testing.assert_close(head(garbage, fm)["logits"], out["logits"])
    alone = head(x[1:2, :4])
    torch.testing.assert_close(alone["embedding"], out["embedding"][1:2])


def test_no_gender_head_and_backward():
    head = BiLSTMHead(input_dim=3, hidden=4, num_classes=2, num_genders=0, proj_dim=4, num_layers=2, dropout=0.1)
    out = head(torch.randn(3, 5, 3))
    assert "gender_logits" not in out
    out["logits"].sum().backward()
    assert head.lstm.weight_ih_l0.grad is not None
