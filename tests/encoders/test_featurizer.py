"""Layer specs and the featurizer."""

from __future__ import annotations

import pytest
import torch

from serkit.encoders import Featurizer, parse_layers
from serkit.errors import ConfigError


def test_parse_layers():
    assert parse_layers("-1", 13) == ([12], False)
    assert parse_layers("-3", 13) == ([10], False)
    assert parse_layers("3", 13) == ([3], False)
    assert parse_layers("0,2,-1", 7) == ([0, 2, 6], False)
    assert parse_layers("2:5", 7) == ([2, 3, 4], False)
    assert parse_layers("all", 3) == ([0, 1, 2], False)
    assert parse_layers("weighted", 3) == ([0, 1, 2], True)
    assert parse_layers("weighted:1,2", 3) == ([1, 2], True)
    assert parse_layers([1, -1], 4) == ([1, 3], False)
    with pytest.raises(ConfigError, match="out of range"):
        parse_layers("13", 13)
    with pytest.raises(ConfigError, match="not an integer"):
        parse_layers("top", 13)


def _states(n=4, b=2, t=5, d=3):
    return tuple(torch.full((b, t, d), float(i)) for i in range(n))


def test_single_concat_stack():
    hs = _states()
    assert torch.equal(Featurizer(4, 3, "-3")(hs), hs[1])
    cat = Featurizer(4, 3, "0,2")
    assert cat.output_size == 6 and cat(hs).shape == (2, 5, 6)
    st = Featurizer(4, 3, "all", reduce="stack")
    assert st(hs).shape == (2, 4, 5, 3)
    # a stacked (batch, layers, frames, dim) tensor, as the cache gives it, works the same
    assert torch.equal(Featurizer(4, 3, "-1")(torch.stack(hs, dim=1)), hs[3])


def test_weighted_sum_learns():
    hs = _states()
    f = Featurizer(4, 3, "weighted")
    torch.testing.assert_close(f(hs), torch.full((2, 5, 3), 1.5))  # equal weights at init: mean of 0..3
    loss = f(hs).sum()
    loss.backward()
    assert f.weights.grad is not None and float(f.weights.grad.abs().sum()) > 0
    assert f.layer_weights().shape == (4,)


def test_normalize_and_wrong_count():
    hs = tuple(torch.randn(2, 5, 8) * (i + 1) + i for i in range(3))
    out = Featurizer(3, 8, "weighted", normalize=True)(hs)
    assert out.shape == (2, 5, 8) and float(out.detach().mean(-1).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="3 hidden states"):
        Featurizer(3, 8, "-1")(hs[:2])
