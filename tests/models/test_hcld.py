"""Model hcld: two branches, output keys and shapes for each extractor pair, the emotion-only variant."""

import pytest
import torch

from serkit.models.catalog import build_model
from serkit.models.registry import ModelSpec

SMALL = {"cnn": {"channels": [8]}, "lstm": {"hidden_size": 4, "num_layers": 1},
         "transformer": {"d_model": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 16}}
SPEC = ModelSpec(task="classification", num_outputs=3, num_layers=2, hidden_size=6, num_speakers=4,
                 class_names=["a", "b", "c"])


def _batch(b=5, t=11):
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        mask[i, : t - i] = True
    return {"features": torch.randn(b, 2, t, 6), "frame_mask": mask,
            "emotion": torch.tensor([0, 1, 2, 0, 1][:b]), "speaker": torch.tensor([0, 0, 1, 1, -1][:b])}


@pytest.mark.parametrize("emo,spk", [("cnn", "cnn"), ("lstm", "transformer"), ("transformer", "cnn"),
                                     ("cnn", "lstm"), ("lstm", "lstm")])
def test_model_keys_and_shapes(emo, spk):
    m = build_model(SPEC, "hcld", emotion_extractor=emo, speaker_extractor=spk, dim=7, extractor_opts=SMALL,
                    pad_frames=8)
    out = m(_batch())
    assert out["logits"].shape == (5, 3) and out["speaker_logits"].shape == (5, 4)
    assert out["emotion_features"].shape == (5, 7) and out["speaker_features"].shape == (5, 7)
    assert torch.equal(out["embedding"], out["emotion_features"])
    none = build_model(SPEC, "hcld", emotion_extractor=emo, speaker_extractor="none", dim=7, extractor_opts=SMALL)
    assert "speaker_features" not in none(_batch()) and "speaker_logits" not in none(_batch())


def test_input_standardisation_is_fitted_on_real_frames_and_removes_a_global_scale_and_shift():
    """input_norm: standardize z-scores every layer and dimension with the training frames' statistics (padding
    left out), so a model fitted on features recorded at another global scale and offset gives the same outputs."""
    from serkit.errors import ConfigError

    batch = _batch()
    torch.manual_seed(0)
    a = build_model(SPEC, "hcld", dim=7, extractor_opts=SMALL, input_norm="standardize").eval()
    assert a.fits_input and not build_model(SPEC, "hcld", dim=7, extractor_opts=SMALL).fits_input
    a.fit_input(batch)
    real = batch["features"].permute(0, 2, 1, 3)[batch["frame_mask"]]  # (real frames, layers, dim)
    torch.testing.assert_close(a.input_norm.mean, real.mean(0))
    torch.testing.assert_close(a.input_norm.std, real.std(0, unbiased=False))
    shifted = {**batch, "features": batch["features"] * 3.0 + 5.0}
    b = build_model(SPEC, "hcld", dim=7, extractor_opts=SMALL, input_norm="standardize").eval()
    b.load_state_dict(a.state_dict())  # same weights; its statistics come from the shifted frames
    b.fit_input(shifted)
    torch.testing.assert_close(b(shifted)["logits"], a(batch)["logits"], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a(shifted)["logits"], a(batch)["logits"])
    assert set(a.state_dict()) >= {"input_norm.mean", "input_norm.std"}  # saved with the model
    # the training loop passes the training set in chunks (never whole in memory): the same statistics
    c = build_model(SPEC, "hcld", dim=7, extractor_opts=SMALL, input_norm="standardize")
    assert c.fits_input_in_chunks
    c.fit_input({k: v[i:i + 2] for k, v in batch.items()} for i in range(0, 5, 2))
    torch.testing.assert_close(c.input_norm.mean, a.input_norm.mean)
    torch.testing.assert_close(c.input_norm.std, a.input_norm.std)
    with pytest.raises(ConfigError, match="input_norm"):
        build_model(SPEC, "hcld", input_norm="batch")
