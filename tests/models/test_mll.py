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
