"""A tiny synthetic corpus whose classes are learnable from filterbanks (tone pitch per class)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import write_tone

FREQS = {"low": 180.0, "mid": 600.0, "high": 1800.0}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rows = []
    for s in range(6):
        for emo, f in FREQS.items():
            for u in range(4):
                p = write_tone(root / f"spk{s}" / f"{emo}_{u}.wav", seconds=0.4 + 0.1 * u, freq=f * (1 + 0.03 * s),
                               seed=s * 100 + u)
                rows.append({"path": str(p), "emotion": emo, "speaker": f"spk{s}",
                             "gender": "female" if s % 2 else "male",
                             "arousal": {"low": -0.5, "mid": 0.0, "high": 0.5}[emo] + 0.05 * u,
                             "valence": 0.1 * u - 0.1, "id": f"spk{s}_{emo}_{u}"})
    table = root / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return root


def tiny_config(root, **over) -> dict:
    cfg = {
        "name": "tiny",
        "corpus": "csv",
        "root": str(root / "table.csv"),
        "protocol": {"name": "speaker_kfold", "k": 3, "val_speakers": 1},
        "encoder": {"id": "fbank-40", "layers": "all"},
        # short tones: every speaker has about 6 s, under the default 10 s a speaker needs for its own statistics
        "features": {"cache_dir": str(root / "cache"), "normalize": "none", "speaker_min_seconds": 0.0,
                     "layers": "weighted"},
        "model": {"name": "baseline", "proj_dim": 16, "pooling": "stats", "dropout": 0.0},
        "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "patience": 10, "progress": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(scope="session")
def spk_model(tiny_corpus, tmp_path_factory):
    """A speaker-normalised pooled model of the tiny corpus (speaker + global heads), trained once per session."""
    from serkit.train.final import train_final

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "normalize": "speaker"},
                      predict={"window_seconds": 1.0, "hop_seconds": 0.5})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    cfg["features"]["layers"] = "all"
    return train_final(cfg, tmp_path_factory.mktemp("spk-model") / "model", log=lambda *a: None)


@pytest.fixture
def model_dir(tiny_corpus, tmp_path):
    """A model folder as `serkit train` writes it, built without training (weights as initialised)."""
    from safetensors.torch import save_file

    from serkit.config import dump, load_config
    from serkit.models.registry import ModelSpec
    from serkit.recipes.catalog import get_recipe

    cfg = load_config(tiny_config(tiny_corpus))
    d = tmp_path / "model"
    d.mkdir()
    spec = {"task": "classification", "num_outputs": 3, "num_layers": 1, "hidden_size": 40, "num_speakers": 4,
            "class_names": ["high", "low", "mid"]}
    model = get_recipe("baseline").build_model(cfg, ModelSpec(**spec, extra={"encoder": cfg["encoder"]}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.yaml").write_text(dump(cfg))
    (d / "labels.json").write_text(json.dumps({"task": "classification", "classes": spec["class_names"],
                                               "targets": [], "speakers": ["a", "b", "c", "d"]}))
    (d / "encoder.json").write_text(json.dumps({"encoder": "fbank-40", "mode": "native", "layers": [0]}))
    (d / "meta.json").write_text(json.dumps({"spec": spec}))
    return d
