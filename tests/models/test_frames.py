"""Frame helpers: crop / pad to a length, masked average pooling over time."""

import torch

from serkit.models.frames import crop_pad_frames, pool_frames


def test_crop_pad_and_pool():
    x, mask = torch.randn(3, 10, 2), torch.zeros(3, 10, dtype=torch.bool)
    mask[0], mask[1, :4], mask[2, :7] = True, True, True
    y, m = crop_pad_frames(x, mask, 6)
    assert y.shape == (3, 6, 2) and m.sum(1).tolist() == [6, 4, 6]
    assert torch.equal(y[0], x[0, 2:8]) and torch.equal(y[1, :4], x[1, :4])  # centre crop; short rows untouched
    y, m = crop_pad_frames(x, mask, 12, pad="zeros")
    assert y.shape == (3, 12, 2) and bool(m.all()) and float(y[1, 4:].abs().sum()) == 0.0
    p, pm = pool_frames(x[:, None], mask, 4)
    assert p.shape == (3, 1, 3, 2) and pm.sum(1).tolist() == [3, 1, 2]
    assert torch.allclose(p[2, 0, 1], x[2, 4:7].mean(0))  # padded frames excluded from the average
