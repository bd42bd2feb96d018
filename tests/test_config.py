import pytest

from serkit.config import load_config
from serkit.errors import ConfigError


def test_repo_configs_validate():
    from pathlib import Path

    for p in Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"):
        if p.parent.name != "ablations":  # rows files of `serkit ablate`, not experiment configs
            load_config(p)


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config({"corpus": "ravdess", "modle": {}})
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config({"corpus": "ravdess", "train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="task"):
        load_config({"corpus": "ravdess", "task": "clustering"})
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config({"corpus": "ravdess", "train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="corpus"):
        load_config({})


def test_overrides():
    cfg = load_config({"corpus": "ravdess"}, ["train.lr=0.01", "model.pooling=max", "protocol={name: random}"])
    assert cfg["train"]["lr"] == 0.01 and cfg["model"]["pooling"] == "max" and cfg["protocol"] == {"name": "random"}
    assert cfg["train"]["monitor"] == "val_ua"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({"corpus": "ravdess"}, ["nonsense.x=1"])
