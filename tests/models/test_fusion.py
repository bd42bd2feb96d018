"""IF-MVSE fusion blocks: Eqs. (2)-(6) on hand-computed cases, shapes, config errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from serkit.errors import ConfigError
from serkit.models.fusion import (
    FusedPairModel,
    InteractiveAttention,
    MultiViewScorer,
    SelfBalancingGate,
    SingleViewModel,
    ViewMLP,
)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_interactive_attention_equations():
    f1 = torch.tensor([[1.0, -2.0, 0.0]])
    f2 = torch.tensor([[0.5, 1.0, 3.0]])
    h1, h2, alpha = InteractiveAttention()(f1, f2)
    # F_inter = [0.5, -2, 0]; alpha = sigmoid(tanh(F_inter))
    want = torch.tensor([[sig(math.tanh(0.5)), sig(math.tanh(-2.0)), 0.5]])
    torch.testing.assert_close(alpha, want)
    torch.testing.assert_close(h1, want * f1)
    torch.testing.assert_close(h2, want * f2)
    with pytest.raises(ValueError, match="equal shapes"):
        InteractiveAttention()(f1, torch.zeros(1, 2))


def _set(linear: nn.Linear, w):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(w, dtype=torch.float32))


def test_self_balancing_gate_hand_computed():
    gate = SelfBalancingGate(dim=1, out_dim=1, bias=False)
    _set(gate.w1p, [[1.0]])
    _set(gate.w2p, [[2.0]])
    _set(gate.wzp, [[1.0, -1.0]])
    _set(gate.w1q, [[0.5]])
    _set(gate.w2q, [[-1.0]])
    _set(gate.wzq, [[2.0, 0.0]])
    f1, f2 = torch.tensor([[0.3]]), torch.tensor([[-0.4]])
    h1, h2, _ = InteractiveAttention()(f1, f2)
    s = gate(f1, f2, h1, h2)
    a = sig(math.tanh(0.3 * -0.4))
    fh1, fh2 = a * 0.3, a * -0.4
    p1, p2, zp = math.tanh(0.3), math.tanh(2 * -0.4), sig(0.3 + 0.4)
    q1, q2, zq = math.tanh(0.5 * fh1), math.tanh(-fh2), sig(2 * fh1)
    want = zp * p1 + (1 - zp) * p2 + zq * q1 + (1 - zq) * q2
    assert s.item() == pytest.approx(want, abs=1e-6)
    assert gate.w1p.bias is None and SelfBalancingGate(4, 3).w1p.bias is not None


def test_view_mlp_and_models_shapes():
    torch.manual_seed(0)
    mlp = ViewMLP(12, 3, hidden=(8, 4), input_proj=6)
    assert mlp.proj.weight.shape == (6, 12)
    assert mlp(torch.randn(5, 12)).shape == (5, 3)
    two = ViewMLP(6, 2, hidden=(4,), num_paths=2).eval()
    x = torch.randn(3, 6)
    torch.testing.assert_close(two(x), (two.paths[0](x) + two.paths[1](x)) / 2)
    assert SingleViewModel(6, 3, hidden=(4,))(torch.randn(2, 6)).shape == (2, 3)
    pair = FusedPairModel((10, 8), 3, fuse_dim=8, gate_dim=5, hidden=(4,))
    assert isinstance(pair.proj[1], nn.Identity) and pair.proj[0].weight.shape == (8, 10)
    assert pair(torch.randn(2, 10), torch.randn(2, 8)).shape == (2, 3)


def test_multiview_scorer():
    torch.manual_seed(0)
    sets = [{"name": "S1", "views": ["whisper"]}, {"name": "S2", "views": ["whisper", "wavlm"]},
            {"name": "S3", "views": ["wavlm"], "num_paths": 2}]
    scorer = MultiViewScorer({"whisper": 12, "wavlm": 8}, sets, out_dim=3, hidden=(4,), fuse_dim=8)
    out = scorer({"whisper": torch.randn(4, 12), "wavlm": torch.randn(4, 8), "extra": torch.randn(4, 2)})
    assert scorer.names == ["S1", "S2", "S3"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {"S1": (4, 3), "S2": (4, 3), "S3": (4, 3)}
    with pytest.raises(ConfigError, match="unknown views"):
        MultiViewScorer({"a": 4}, [{"name": "S", "views": ["b"]}], 1)
    with pytest.raises(ConfigError, match="one view or a pair"):
        MultiViewScorer({"a": 4}, [{"name": "S", "views": ["a", "a", "a"]}], 1)
    with pytest.raises(ConfigError, match="duplicate"):
        MultiViewScorer({"a": 4}, [{"name": "S", "views": ["a"]}, {"name": "S", "views": ["a"]}], 1)
    with pytest.raises(KeyError, match="needs views"):
        scorer({"whisper": torch.randn(4, 12)})
