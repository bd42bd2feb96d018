"""AM-Softmax head and loss (GMP-ATL Eqs. 2-3) on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from serkit.errors import ConfigError
from serkit.losses import build_loss
from serkit.models.heads_am import AMSoftmaxHead


def test_head_cosines_and_scaled_logits():
    head = AMSoftmaxHead(dim=2, num_classes=3, s=30.0, m=0.2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, -1.0]]))
    out = head(torch.tensor([[3.0, 4.0]]))
    want = torch.tensor([[0.6, 0.8, -7 / (5 * math.sqrt(2))]])
    torch.testing.assert_close(out["cosine"], want)
    torch.testing.assert_close(out["logits"], 30 * want)  # no margin at inference


def test_loss_hand_computed():
    loss = build_loss("am_softmax")  # s=30, m=0.2
    cos = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.4]])
    y = torch.tensor([0, 2])
    # row 0: logits [30*(0.5-0.2), 3, -6] = [9, 3, -6]; row 1: [0, 9, 30*(0.4-0.2)] = [0, 9, 6]
    l0 = -9 + math.log(math.exp(9) + math.exp(3) + math.exp(-6))
    l1 = -6 + math.log(1 + math.exp(9) + math.exp(6))
    assert loss({"cosine": cos}, {"emotion": y}).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # ignored rows do not count
    y_ign = torch.tensor([0, -1])
    assert loss({"cosine": cos}, {"emotion": y_ign}).item() == pytest.approx(l0, rel=1e-5)


def test_loss_gradient_and_errors():
    head = AMSoftmaxHead(4, 3)
    x = torch.randn(5, 4)
    loss = build_loss("am_softmax", s=10.0, m=0.3)
    value = loss(head(x), {"emotion": torch.tensor([0, 1, 2, 0, 1])})
    value.backward()
    assert head.weight.grad is not None and torch.isfinite(value)
    with pytest.raises(ConfigError, match="soft labels"):
        loss(head(x), {"emotion": torch.zeros(5, dtype=torch.long), "emotion_soft": torch.ones(5, 3) / 3})
    with pytest.raises(KeyError, match="cosine"):
        loss({"logits": torch.zeros(5, 3)}, {"emotion": torch.zeros(5, dtype=torch.long)})
