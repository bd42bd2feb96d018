"""HCLD extractors: shapes, masking invariance, registry errors."""

from __future__ import annotations

import pytest
import torch

from serkit.errors import ConfigError
from serkit.models.extractors import build_extractor

SMALL = {
    "cnn": {"channels": (16, 12), "kernel_size": 3},
    "lstm": {"hidden_size": 8, "num_layers": 2},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 2, "ff_dim": 32},
}


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 9, 20, generator=g)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, :9] = True
    mask[1, :5] = True
    mask[2, :2] = True
    return frames, mask


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shape_and_masking_invariance(name):
    torch.manual_seed(0)
    ext = build_extractor(name, 20, 7, dropout=0.1, **SMALL[name]).eval()
    frames, mask = _inputs()
    with torch.no_grad():
        y = ext(frames, mask)
        changed = frames.clone()
        changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), 20)
        y2 = ext(changed, mask)
        # a padded row equals the same utterance run alone, unpadded
        alone = ext(frames[1:2, :5], None)
    assert y.shape == (3, 7) and torch.isfinite(y).all()
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_backward_and_empty_rows(name):
    ext = build_extractor(name, 20, 4, **SMALL[name]).train()
    frames, mask = _inputs(1)
    mask[2] = False  # a row with no real frame must not produce NaNs
    y = ext(frames.requires_grad_(), mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(frames.grad).all()


def test_pooling_option_and_errors():
    ext = build_extractor("cnn", 20, 5, channels=(8,), pooling="stats")
    assert ext(torch.randn(2, 4, 20)).shape == (2, 5)
    assert build_extractor("bilstm", 20, 3, hidden_size=4)(torch.randn(1, 3, 20)).shape == (1, 3)
    with pytest.raises(ConfigError, match="unknown"):
        build_extractor("gru", 20, 5)
    with pytest.raises(ConfigError, match="bad options"):
        build_extractor("cnn", 20, 5, hidden=3)
    with pytest.raises(ConfigError, match="divisible"):
        build_extractor("transformer", 20, 5, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="expected"):
        build_extractor("lstm", 20, 5, hidden_size=4)(torch.randn(2, 3, 19))
