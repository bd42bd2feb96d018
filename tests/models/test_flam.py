"""FLAM (MLL paper Section 2.3, Eq. 5): shapes, masking, gradients."""

from __future__ import annotations

import pytest
import torch

from serkit.models.flam import FLAM, AttentionPooling, FLAMOutput


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    return x, mask


def test_flam_shapes_and_alpha():
    x, mask = _inputs()
    flam = FLAM(8, num_heads=4).eval()
    res = flam(x, mask, return_all=True)
    assert isinstance(res, FLAMOutput)
    assert res.pooled.shape == (3, 8) and res.frames.shape == (3, 6, 8) and res.alpha.shape == (3, 6)
    assert torch.all(res.alpha[~mask] == 0)
    torch.testing.assert_close(res.alpha.sum(1), torch.ones(3))
    assert res.alpha[2, 0].item() == pytest.approx(1.0)
    # pooled = sum_t alpha_t f'_t
    torch.testing.assert_close(res.pooled, torch.einsum("bt,btd->bd", res.alpha, res.frames))
    assert flam(x, mask).shape == (3, 8)
    assert flam(x).shape == (3, 8)  # no mask: all frames real


def test_flam_padded_values_do_not_matter():
    x, mask = _inputs()
    flam = FLAM(8, num_heads=2).eval()
    y = x.clone()
    y[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8)
    a, b = flam(x, mask, return_all=True), flam(y, mask, return_all=True)
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.frames[mask], b.frames[mask])
    # trimming the padding gives the same utterance vector
    torch.testing.assert_close(flam(x[1:2, :3]), a.pooled[1:2], atol=1e-5, rtol=1e-5)


def test_flam_residual_and_heads_check():
    x, mask = _inputs()
    flam = FLAM(8, num_heads=4)
    with torch.no_grad():
        flam.msa.out_proj.weight.zero_()
        flam.msa.out_proj.bias.zero_()
    torch.testing.assert_close(flam(x, mask, return_all=True).frames[mask], x[mask])  # MSA = 0 -> F' = F
    assert FLAM(32).num_heads == 16
    with pytest.raises(ValueError, match="divide"):
        FLAM(10, num_heads=16)


def test_attention_pooling_by_hand_and_empty_row():
    pool = AttentionPooling(2)
    with torch.no_grad():
        pool.w.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[[0.0, 1.0], [1.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    pooled, alpha = pool(x, mask, return_alpha=True)
    e0, e1 = torch.exp(torch.tensor(0.0)), torch.exp(torch.tensor(1.0))
    a = torch.stack([e0, e1]) / (e0 + e1)
    torch.testing.assert_close(alpha, torch.tensor([[a[0], a[1], 0.0]]))
    torch.testing.assert_close(pooled, (a[0] * x[0, 0] + a[1] * x[0, 1]).unsqueeze(0))
    pooled, alpha = pool(x, torch.zeros(1, 3, dtype=torch.bool), return_alpha=True)
    assert torch.all(pooled == 0) and torch.all(alpha == 0)


def test_flam_gradients_flow():
    x, mask = _inputs()
    x.requires_grad_(True)
    flam = FLAM(8, num_heads=4)
    flam(x, mask).pow(2).sum().backward()
    assert flam.pool.w.grad is not None and flam.pool.w.grad.abs().sum() > 0
    assert flam.msa.in_proj_weight.grad.abs().sum() > 0
    assert torch.all(x.grad[~mask] == 0) and x.grad[mask].abs().sum() > 0
    # an all-padded utterance gives no NaN
    m2 = mask.clone()
    m2[2] = False
    assert torch.isfinite(flam(x, m2)).all()
