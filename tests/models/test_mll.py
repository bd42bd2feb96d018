"""Model mll: output keys and shapes for each pooling."""

import pytest
import torch

from serkit.models.catalog import available_models
from serkit.models.mll import MLLModel
from serkit.models.registry import ModelSpec


def _spec(classes=3):
    return ModelSpec(task="classification", num_outputs=classes, num_layers=2, hidden_size=12,
                     class_names=[f"c{i}" for i in range(classes)])


@pytest.mark.parametrize("pooling", ["mean", "max", "flam"])
def test_model_shapes_and_keys(pooling):
    m = MLLModel(_spec(), proj_dim=16, pooling=pooling, num_heads=4, embed_dim=8, frame_embed_dim=6)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    out = m({"features": torch.randn(3, 2, 7, 12), "frame_mask": mask})
    assert out["logits"].shape == (3, 3) and out["embedding"].shape == (3, 16)
    assert out["projection"].shape == (3, 8) and out["frame_projection"].shape == (3, 7, 6)
    assert out["frame_mask"].shape == (3, 7) and out["frames"].shape == (3, 7, 16)
    assert torch.isfinite(out["logits"]).all()


def test_registered_without_importing_recipes():
    import subprocess
    import sys

    code = ("import sys; from serkit.models.catalog import available_models; names = available_models(); "
            "assert {'mll', 'hcld'} <= set(names), names; "
            "assert not [m for m in sys.modules if m.startswith('serkit.recipes')], 'recipes imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "mll" in available_models()


def test_standardised_input_removes_a_global_scale_and_shift():
    """input_norm: standardize (the mixin HCLD shares): fitted on real frames only, saved with the weights."""
    torch.manual_seed(0)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[2, 3:] = False
    x = torch.randn(4, 2, 7, 12)
    a = MLLModel(_spec(), proj_dim=16, pooling="flam", num_heads=4, input_norm="standardize").eval()
    a.fit_input({"features": x, "frame_mask": mask})
    torch.testing.assert_close(a.input_norm.mean, x.permute(0, 2, 1, 3)[mask].mean(0))
    b = MLLModel(_spec(), proj_dim=16, pooling="flam", num_heads=4, input_norm="standardize").eval()
    b.load_state_dict(a.state_dict())
    b.fit_input({"features": x * 0.5 - 2.0, "frame_mask": mask})
    torch.testing.assert_close(b({"features": x * 0.5 - 2.0, "frame_mask": mask})["logits"],
                               a({"features": x, "frame_mask": mask})["logits"], atol=1e-5, rtol=1e-4)
    assert not MLLModel(_spec(), proj_dim=16, num_heads=4).fits_input
