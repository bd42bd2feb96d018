"""train.logger: csv (default) | tensorboard | mlflow through Lightning's loggers."""

from __future__ import annotations

import importlib.util

import pytest

from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.train.trainer import LOGGER_PACKAGES, make_loggers

BASE = {"corpus": "csv", "root": "x.csv", "name": "exp"}


def _cfg(kind: str) -> dict:
    return load_config({**BASE, "train": {"logger": kind}})


def test_csv_is_the_default_and_always_there(tmp_path):
    assert load_config(BASE)["train"]["logger"] == "csv"
    (csv,) = make_loggers(_cfg("csv"), tmp_path / "fold0")
    assert type(csv).__name__ == "CSVLogger"
    with pytest.raises(ConfigError, match="train.logger"):
        load_config({**BASE, "train": {"logger": "wandb"}})


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_tracking_loggers_or_a_clear_error(kind, tmp_path):
    installed = any(importlib.util.find_spec(m) for m in LOGGER_PACKAGES[kind])
    if not installed:
        with pytest.raises(ConfigError, match=r"not installed: pip install 'serkit\[tracking\]'"):
            make_loggers(_cfg(kind), tmp_path / "fold0")
        return
    loggers = make_loggers(_cfg(kind), tmp_path / "fold0")
    assert [type(x).__name__ for x in loggers] == ["CSVLogger", {"tensorboard": "TensorBoardLogger",
                                                                 "mlflow": "MLFlowLogger"}[kind]]
