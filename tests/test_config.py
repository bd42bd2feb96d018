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


def test_serkit_config_prints_the_resolved_config_a_run_saves(tmp_path, capsys):
    """`serkit config FILE --set k=v`: defaults filled, extends and overrides applied; a bad value is one line."""
    import yaml

    from serkit.cli import main
    from serkit.config import dump, load_config
    from serkit.config_defaults import DEFAULTS

    base = tmp_path / "base.yaml"
    base.write_text("name: b\ncorpus: emodb\ntrain: {epochs: 7}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: c\n")
    assert main(["config", str(child), "--set", "train.lr=0.01"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["name"] == "c" and printed["train"]["epochs"] == 7 and printed["train"]["lr"] == 0.01
    assert printed["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]  # a default, filled in
    assert out == dump(load_config(child, ["train.lr=0.01"]))
    assert main(["config", str(child), "--set", "train.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.epochs" in err
