"""The config serkit builds for a table or a folder per class (``serkit cv DIR`` / ``serkit train DIR``) uses only
current spellings: loading it, and reloading the copy a run folder keeps, warns about nothing."""

from __future__ import annotations

import warnings

import pytest
import yaml

from serkit.config import dump, load_config
from serkit.train.defaults import RECIPE_CONFIGS, table_config
from tests.conftest import write_tone


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "data"
    for emotion, freq in (("happy", 500.0), ("sad", 200.0)):
        for speaker in range(3):
            for u in range(2):
                write_tone(root / emotion / f"spk{speaker}" / f"{u}.wav", freq=freq, seed=speaker * 10 + u)
    return root


def _loaded_without_warnings(cfg) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_config(cfg)
    assert not [str(w.message) for w in caught]
    return loaded


@pytest.mark.parametrize("recipe", [None, *sorted(p.stem for p in RECIPE_CONFIGS.glob("*.yaml"))])
def test_a_folder_per_class_gets_a_config_that_warns_about_nothing(class_folders, tmp_path, recipe):
    cfg = table_config(class_folders, recipe=recipe)
    assert cfg["corpus"] == "folder"
    loaded = _loaded_without_warnings(cfg)
    saved = tmp_path / "config.yaml"  # what a run folder keeps, read again on resume
    saved.write_text(dump(loaded))
    assert _loaded_without_warnings(yaml.safe_load(saved.read_text()))["features"] == loaded["features"]


def test_the_default_head_reads_every_layer(class_folders):
    assert load_config(table_config(class_folders))["features"]["layers"] == "all"
