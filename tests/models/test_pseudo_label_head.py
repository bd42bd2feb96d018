"""Multi-scale pseudo-label head and its masked CE loss."""

from __future__ import annotations

import pytest
import torch

from serkit.losses import build_loss
from serkit.models.pseudo_label_head import PseudoLabelHead


def test_head_shapes():
    head = PseudoLabelHead(dim=6, ks=(4, 8), hidden=5)
    out = head(torch.randn(2, 7, 6))
    assert {k: tuple(v.shape) for k, v in out.items()} == {4: (2, 7, 4), 8: (2, 7, 8)}
    assert len(head.heads["4"]) == 3  # Linear, ReLU, Linear


def test_loss_masked_and_all():
    torch.manual_seed(0)
    logits = {4: torch.randn(2, 5, 4, requires_grad=True), 8: torch.randn(2, 5, 8)}
    labels = {"4": torch.tensor([[0, 1, 2, 3, -1], [1, 1, -1, -1, -1]]),
              "8": torch.tensor([[7, 6, 5, 4, -1], [0, 1, -1, -1, -1]])}
    span = torch.zeros(2, 5, dtype=torch.bool)
    span[0, 1:3] = True
    span[1, 1:4] = True  # frames 2, 3 of row 1 are padding: ignored
    out = {"pseudo_logits": logits, "span_mask": span}
    batch = {"pseudo_labels": labels}

    def ce(k, sel):
        return torch.nn.functional.cross_entropy(logits[k][sel], torch.as_tensor(labels[str(k)])[sel])

    sel = span & (labels["4"] >= 0)
    want = (ce(4, sel) + ce(8, sel)) / 2
    value = build_loss("pseudo_label_ce")(out, batch)
    torch.testing.assert_close(value, want)
    value.backward()
    assert logits[4].grad[0, 0].abs().sum() == 0 and logits[4].grad[0, 1].abs().sum() > 0

    sel_all = labels["4"] >= 0
    want_all = 0.25 * ce(4, sel_all) + 0.75 * ce(8, sel_all)
    got = build_loss("pseudo_label_ce", masked_only=False, scale_weights={4: 1, 8: 3})(
        {"pseudo_logits": logits}, batch)
    torch.testing.assert_close(got, want_all)


def test_loss_empty_selection_and_errors():
    logits = {4: torch.randn(1, 3, 4, requires_grad=True)}
    labels = {4: torch.tensor([[0, 1, 2]])}
    loss = build_loss("pseudo_label_ce")
    value = loss({"pseudo_logits": logits, "span_mask": torch.zeros(1, 3, dtype=torch.bool)},
                 {"pseudo_labels": labels})
    assert value.item() == 0.0 and value.requires_grad
    with pytest.raises(KeyError, match="span_mask"):
        loss({"pseudo_logits": logits}, {"pseudo_labels": labels})
    with pytest.raises(ValueError, match="labels"):
        build_loss("pseudo_label_ce", masked_only=False)({"pseudo_logits": logits},
                                                          {"pseudo_labels": {4: torch.zeros(1, 2).long()}})
