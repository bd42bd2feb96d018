"""MLL losses (paper Eqs. 6-10): KL, focal, center, SupCon, frame-level SupCon -- against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from serkit.losses import build_loss
from serkit.losses.frame_supcon import FrameSupCon, context_broadcast
from serkit.losses.supcon import SupCon, supcon_loss

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
SOFT = [[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]]


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _batch_soft():
    return {"emotion": torch.tensor([0, 2]), "emotion_soft": torch.tensor(SOFT)}


def test_registered():
    for name in ("kl", "focal", "supcon", "frame_supcon"):
        assert build_loss(name) is not None
    assert build_loss("center", num_classes=4, dim=64).lr == 5e-3


def test_kl_hand_computed_and_onehot():
    expected = 0.0
    for row, y in zip(LOGITS, SOFT, strict=True):
        p = _softmax(row)
        expected += sum(yc * math.log(yc / pc) for yc, pc in zip(y, p, strict=True) if yc > 0)
    expected /= 2
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = build_loss("kl")({"logits": logits}, _batch_soft())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    # without emotion_soft: one-hot of emotion -> KL = CE
    batch = {"emotion": torch.tensor([0, 2])}
    ce = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), batch["emotion"])
    assert build_loss("kl")({"logits": torch.tensor(LOGITS)}, batch).item() == pytest.approx(ce.item(), rel=1e-5)
    # saturated logits stay finite
    big = torch.tensor([[100.0, -100.0, 0.0]])
    assert torch.isfinite(build_loss("kl")({"logits": big}, {"emotion": torch.tensor([1])}))


def test_focal_hand_computed():
    gamma = 2.0
    expected = 0.0
    for row, y in zip(LOGITS, SOFT, strict=True):
        p = _softmax(row)
        expected += -sum(yc * (1 - pc) ** gamma * math.log(pc) for yc, pc in zip(y, p, strict=True))
    expected /= 2
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = build_loss("focal", gamma=gamma)({"logits": logits}, _batch_soft())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    ce = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor([0, 2]))
    g0 = build_loss("focal", gamma=0.0)({"logits": torch.tensor(LOGITS)}, {"emotion": torch.tensor([0, 2])})
    assert g0.item() == pytest.approx(ce.item(), rel=1e-5)


def test_center_hand_computed_and_grads():
    loss_fn = build_loss("center", num_classes=3, dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]]))
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]], requires_grad=True)
    # dominant classes of the soft labels: 1, 2, 0
    batch = {"emotion": torch.tensor([1, 2, 0]),
             "emotion_soft": torch.tensor([[0.2, 0.8, 0.0], [0.1, 0.3, 0.6], [0.9, 0.1, 0.0]])}
    centers = [[0, 0], [1, 1], [2, -1]]
    zz = [[1, 2], [3, -1], [0, 1]]
    ys = [1, 2, 0]
    expected = sum(sum((a - b) ** 2 for a, b in zip(zz[i], centers[ys[i]], strict=True)) for i in range(3)) / 3
    loss = loss_fn({"projection": z}, batch)
    assert loss.item() == pytest.approx(expected)  # (0+1 + 1+0 + 0+1) / 3 = 1
    loss.backward()
    assert z.grad.abs().sum() > 0 and loss_fn.centers.grad.abs().sum() > 0
    assert [n for n, _ in loss_fn.named_parameters()] == ["centers"]


def _supcon_numpy(feats: np.ndarray, labels: list[int], tau: float) -> float:
    z = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    n = len(labels)
    total, count = 0.0, 0
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        if not pos:
            continue
        denom = sum(math.exp(z[a] @ z[k] / tau) for k in range(n) if k != a)
        total += -sum(math.log(math.exp(z[a] @ z[p] / tau) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_supcon_core_hand_computed():
    feats = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 2.0], [-1.0, 1.0]])
    labels = [0, 0, 1, 2]  # anchor 3 has no positive, anchor 2 neither -> skipped
    tau = 0.5
    expected = _supcon_numpy(feats, labels, tau)
    f = torch.tensor(feats, dtype=torch.float32, requires_grad=True)
    loss = supcon_loss(f, torch.tensor(labels), tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    # no positives at all -> 0, still differentiable
    zero = supcon_loss(f, torch.tensor([0, 1, 2, 3]), tau)
    assert zero.item() == 0.0 and zero.requires_grad


def test_utterance_supcon_module():
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 2.0], [0.1, 1.0]])
    batch = {"emotion": torch.tensor([0, 0, 1, 1]),
             "emotion_soft": torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.0, 1.0]])}
    expected = _supcon_numpy(feats.numpy().astype(np.float64), [0, 0, 1, 1], 0.07)
    loss = SupCon(temperature=0.07)({"embedding": feats}, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss2 = SupCon(feature_key="emotion_features", temperature=0.07)({"emotion_features": feats}, batch)
    assert loss2.item() == pytest.approx(expected, rel=1e-4)


def test_frame_supcon_hand_computed():
    # 2 utterances: the first with 3 real frames (class 1), the second with 2 real + 1 padded (class 0)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                      [[-1.0, 0.5], [0.5, -1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    batch = {"emotion": torch.tensor([1, 0])}
    hn = h.numpy().astype(np.float64)
    rows, labels = [], []
    for b, n_real, lab in ((0, 3, 1), (1, 2, 0)):
        mean = hn[b, :n_real].mean(0)
        for t in range(n_real):
            rows.append(0.5 * (hn[b, t] + mean))  # Eq. (9)
            labels.append(lab)
    expected = _supcon_numpy(np.array(rows), labels, 0.1)
    hv = h.clone().requires_grad_(True)
    loss = FrameSupCon(temperature=0.1)({"frame_projection": hv, "frame_mask": mask}, batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert hv.grad[mask].abs().sum() > 0 and torch.all(hv.grad[~mask] == 0)
    # changing a padded frame does not change the loss
    h2 = h.clone()
    h2[1, 2] = torch.tensor([-5.0, 3.0])
    loss2 = FrameSupCon(temperature=0.1)({"frame_projection": h2, "frame_mask": mask}, batch)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    # context broadcasting by hand for one frame
    cb = context_broadcast(h, mask)
    torch.testing.assert_close(cb[1, 0], 0.5 * (h[1, 0] + (h[1, 0] + h[1, 1]) / 2))


def test_frame_supcon_subsampling_and_soft_labels():
    torch.manual_seed(0)
    h = torch.randn(4, 50, 8, requires_grad=True)
    mask = torch.ones(4, 50, dtype=torch.bool)
    mask[2, 30:] = False
    batch = {"emotion": torch.tensor([0, 1, 0, 1]), "emotion_soft": torch.tensor(
        [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])}
    loss = FrameSupCon(max_frames=64)({"frame_projection": h, "frame_mask": mask}, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert h.grad.abs().sum() > 0
    full = FrameSupCon(max_frames=None)({"frame_projection": h, "frame_mask": mask}, batch)
    assert torch.isfinite(full)
