"""HuBERT-style span masking: span lengths, padding, min_masks, determinism, embedding replacement."""

from __future__ import annotations

import pytest
import torch

from serkit.augment.masking import SpanMasker, apply_span_mask, compute_span_mask


def _runs(row: torch.Tensor) -> list[int]:
    runs, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_single_span_has_exact_length():
    m = compute_span_mask((4, 50), mask_prob=0.0, span=10, min_masks=1, generator=0)
    for row in m:
        assert _runs(row) == [10]


def test_min_masks_and_rate():
    m = compute_span_mask((3, 40), mask_prob=0.0, span=1, min_masks=2, generator=1)
    assert m.sum(1).tolist() == [2, 2, 2]
    big = compute_span_mask((8, 1000), mask_prob=0.08, span=10, min_masks=2, generator=2)
    frac = big.float().mean().item()
    assert 0.45 < frac < 0.68  # about 1 - 0.92**10 = 0.57
    for row in big:
        assert all(r >= 10 for r in _runs(row))  # overlapping spans merge, never shorter


def test_no_starts_or_masks_on_padding():
    lengths = [30, 12, 5, 0]
    fm = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    m = compute_span_mask((4, 40), mask_prob=0.2, span=10, min_masks=2, frame_mask=fm, generator=3)
    assert not (m & ~fm).any()
    assert m[0].any() and m[1].any() and m[2].any()
    assert not m[3].any()
    # every span fits inside the real frames when the utterance is long enough
    m1 = compute_span_mask((1, 40), mask_prob=0.0, span=10, min_masks=1, frame_mask=fm[1:2], generator=4)
    assert _runs(m1[0]) == [10] and m1[0, :12].sum() == 10


def test_determinism():
    a = compute_span_mask((2, 100), generator=torch.Generator().manual_seed(7))
    b = compute_span_mask((2, 100), generator=torch.Generator().manual_seed(7))
    c = compute_span_mask((2, 100), generator=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_apply_and_module():
    frames = torch.randn(2, 6, 3)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1:3] = True
    emb = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = apply_span_mask(frames, mask, emb)
    assert torch.equal(out[0, 1], emb.detach()) and torch.equal(out[1], frames[1])
    out.sum().backward()
    assert emb.grad.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        apply_span_mask(frames, mask, torch.zeros(4))
    masker = SpanMasker(3, mask_prob=0.1, span=2, min_masks=1)
    x, m = masker(frames, generator=0)
    assert m.any() and torch.equal(x[m], masker.mask_embedding.detach().expand(int(m.sum()), 3))
    masker.eval()
    x, m = masker(frames)
    assert torch.equal(x, frames) and not m.any()
