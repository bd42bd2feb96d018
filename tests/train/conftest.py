"""A tiny synthetic corpus whose classes are learnable from filterbanks (tone pitch per class)."""

from __future__ import annotations

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
                             "gender": "female" if s % 2 else "male", "arousal": {"low": -0.5, "mid": 0.0, "high": 0.5}[emo] + 0.05 * u,
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
        "features": {"cache_dir": str(root / "cache")},
        "model": {"name": "baseline", "layers": "weighted", "proj_dim": 16, "pooling": "stats", "dropout": 0.0},
        "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "patience": 10, "progress": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg
