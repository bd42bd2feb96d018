"""Nuisance attribute projection: fitted on training speakers only, it removes what a speaker adds within an
emotion and keeps what separates emotions; it travels in the model folder to predict and the ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serkit.models.nuisance import NuisanceProjection
from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401


def _speakers_and_emotions(n_speakers=6, n_emotions=3, per_cell=4, dim=10, seed=0):
    """Features whose speaker offsets lie along axis 0 and 1 and whose emotions differ along axis 2."""
    g = torch.Generator().manual_seed(seed)
    rows, spk, emo = [], [], []
    for s in range(n_speakers):
        offset = torch.zeros(dim)
        offset[0], offset[1] = 3.0 * torch.randn(1, generator=g), 3.0 * torch.randn(1, generator=g)
        for e in range(n_emotions):
            for _ in range(per_cell):
                x = 0.1 * torch.randn(dim, generator=g) + offset
                x[2] += 2.0 * e
                rows.append(x)
                spk.append(s)
                emo.append(e)
    return torch.stack(rows), torch.tensor(spk), torch.tensor(emo)


def test_the_projection_removes_the_speaker_directions_and_keeps_the_emotion():
    x, spk, emo = _speakers_and_emotions(per_cell=25)
    nap = NuisanceProjection(x.shape[1], rank=2)
    assert nap.fit(x, spk, emo) == 2
    y = nap(x)

    def speaker_spread(f):
        return torch.stack([f[spk == s].mean(0) for s in range(6)])[:, :2].std(0).max()

    assert speaker_spread(y) < speaker_spread(x) / 10  # the speakers no longer apart on axes 0 and 1
    emotion_means = torch.stack([y[emo == e].mean(0) for e in range(3)])
    assert torch.allclose(emotion_means[:, 2], torch.tensor([0.0, 2.0, 4.0]), atol=0.3)  # emotions still apart


def test_rank_zero_is_the_identity_and_the_rank_is_capped_by_the_offsets():
    x, spk, emo = _speakers_and_emotions(n_speakers=2, n_emotions=2)
    assert torch.equal(NuisanceProjection(x.shape[1], 0)(x), x)
    nap = NuisanceProjection(x.shape[1], rank=8)
    assert nap.fit(x, spk, emo) <= 2  # two emotions x two speakers: two offsets, one direction each
    with pytest.raises(ValueError, match="rank"):
        NuisanceProjection(4, -1)


def test_a_fitted_projection_reaches_predict_and_the_onnx_graph(tiny_corpus, tmp_path):  # noqa: F811
    """`serkit train` fits it on the training speakers; the model folder holds it; torch and onnxruntime agree."""
    from safetensors.torch import load_file

    from serkit.inference import Recognizer
    from serkit.train.final import train_final

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"},
                      predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0, "nuisance_rank": 2}
    model_dir = train_final(cfg, tmp_path / "model", log=lambda *a: None)
    weights = load_file(str(model_dir / "model.safetensors"))
    basis = weights["nuisance.basis"]
    assert basis.shape[1] == 2 and basis.abs().sum() > 0  # fitted, not the initial zeros
    files = sorted((tiny_corpus / "spk4").glob("*.wav"))
    rec = Recognizer.from_pretrained(model_dir)
    assert torch.equal(rec.heads["global"].nuisance.basis, basis)
    torch_out = rec.predict_files(files)
    pytest.importorskip("onnxruntime")
    from serkit.export import export_onnx

    export_onnx(model_dir, log=lambda *a: None)
    onnx_out = Recognizer.from_pretrained(model_dir, backend="onnx").predict_files(files)
    diff = max(np.abs(np.array(list(a["probabilities"].values())) - np.array(list(b["probabilities"].values()))).max()
               for a, b in zip(torch_out, onnx_out, strict=True))
    assert diff <= 1e-3
