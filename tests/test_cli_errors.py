"""Every user error is one line ``serkit <cmd>: error: ...`` naming the file / key / value, with exit status 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from serkit.cli import main
from tests.train.conftest import model_dir, tiny_config, tiny_corpus  # noqa: F401


def fails(capsys, argv: list[str], *named: str) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"serkit {argv[0]}: error: "), err
    assert "Traceback" not in err
    for word in named:
        assert word in err, (word, err)
    return err


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"corpus": "emodb", "objective": [{"name": "cross_entropy"}]}))
    return path


@pytest.fixture
def tiny_cfg_file(tiny_corpus, tmp_path):  # noqa: F811
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_corpus, train={"epochs": 1})))
    return path


@pytest.mark.parametrize("assignment, named", [
    ("train.lr=abc", ["train.lr", "abc"]),
    ("train.weight_decay=abc", ["train.weight_decay", "abc"]),
    ("train.seed=abc", ["train.seed", "abc"]),
    ("predict.window_seconds=x", ["predict.window_seconds", "'x'"]),
    ("objective.5.name=x", ["objective.5.name", "'5'"]),
    ("objective.x.name=x", ["objective.x.name", "'x'"]),
    ("model={name: [", ["--set model={name: [", "YAML"]),
])
def test_bad_overrides(capsys, cfg_file, tmp_path, assignment, named):
    fails(capsys, ["cv", str(cfg_file), "--out", str(tmp_path / "out"), "--set", assignment], *named)
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_malformed_yaml_config_names_the_file(capsys, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("corpus: emodb\ntrain: {lr: 0.1\n")
    fails(capsys, ["cv", str(bad), "--out", str(tmp_path / "out")], str(bad), "line")
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {bad.name}\n")
    fails(capsys, ["train", str(child), "--out", str(tmp_path / "m")], str(bad))


def test_non_numeric_protocol_option(capsys, tiny_cfg_file, tmp_path):
    fails(capsys, ["cv", str(tiny_cfg_file), "--out", str(tmp_path / "out"), "--set", "protocol.k=abc"],
          "protocol.k", "abc")


def test_regression_on_a_corpus_without_the_targets(capsys, tiny_cfg_file, tmp_path):
    # the tiny corpus has arousal and valence but no dominance (a default target)
    fails(capsys, ["cv", str(tiny_cfg_file), "--out", str(tmp_path / "out"), "--set", "task=regression"],
          "dominance", "targets")


def test_failed_cv_leaves_nothing_that_blocks_the_corrected_rerun(capsys, tiny_cfg_file, tmp_path):
    out = tmp_path / "out"
    fails(capsys, ["cv", str(tiny_cfg_file), "--out", str(out), "--folds", "0",
                   "--set", "objective=[{name: no_such_loss}]"], "no_such_loss")
    capsys.readouterr()
    assert main(["cv", str(tiny_cfg_file), "--out", str(out), "--folds", "0"]) == 0
    assert (out / "fold0" / "result.json").exists()
    # once a fold has results, the folder stays bound to its config (one line, exit 2)
    fails(capsys, ["cv", str(tiny_cfg_file), "--out", str(out), "--set", "train.lr=0.5"], "config.yaml",
          "different config")


@pytest.fixture
def header_only(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id,path,emotion,speaker,gender\n")
    return path


def test_header_only_manifest(capsys, header_only):
    fails(capsys, ["check", str(header_only)], str(header_only), "no rows")
    fails(capsys, ["folds", str(header_only)], str(header_only), "no rows")


def test_folds_protocol_yaml_and_values(capsys, tiny_corpus, tmp_path):  # noqa: F811
    manifest = tmp_path / "m.csv"
    pd.read_csv(tiny_corpus / "table.csv").assign(duration=0.5).to_csv(manifest, index=False)
    fails(capsys, ["folds", str(manifest), "--protocol", "{name: speaker_kfold, k: abc}"], "protocol.k", "abc")
    fails(capsys, ["folds", str(manifest), "--protocol", "{name: speaker_kfold, k: [}"], "--protocol", "YAML")


def test_extract_from_a_folder_without_config_json(capsys, tiny_corpus, tmp_path):  # noqa: F811
    (tmp_path / "enc").mkdir()
    manifest = tmp_path / "m.csv"
    pd.read_csv(tiny_corpus / "table.csv").head(3).assign(duration=0.5).to_csv(manifest, index=False)
    fails(capsys, ["extract", str(manifest), "--encoder", str(tmp_path / "enc"), "--out", str(tmp_path / "s")],
          str(tmp_path / "enc"), "config.json")


def test_corrupt_or_crafted_model_folders(capsys, model_dir, tiny_corpus):  # noqa: F811
    clip = str(next((tiny_corpus / "spk0").glob("*.wav")))
    from serkit.inference import Recognizer

    Recognizer.from_pretrained(model_dir)  # the folder as written loads
    (model_dir / "meta.json").write_text('{"spec": {"task": "classification", ')
    fails(capsys, ["predict", str(model_dir), clip], "meta.json")
    (model_dir / "meta.json").write_text(json.dumps({"spec": {"task": "classification", "bogus": 1}}))
    fails(capsys, ["predict", str(model_dir), clip], "meta.json")
    (model_dir / "meta.json").write_text(json.dumps({"spec": {"task": "classification", "num_outputs": 3,
                                                              "num_layers": 1, "hidden_size": 64}}))
    fails(capsys, ["predict", str(model_dir), clip], "model.safetensors", "size mismatch")
    labels = (model_dir / "labels.json").read_text()
    (model_dir / "labels.json").write_text("[1, 2")
    fails(capsys, ["predict", str(model_dir), clip], "labels.json")
    (model_dir / "labels.json").write_text(labels)
    (model_dir / "config.yaml").write_text("encoder: [")
    fails(capsys, ["predict", str(model_dir), clip], "config.yaml")
    (model_dir / "labels.json").unlink()
    fails(capsys, ["predict", str(model_dir), clip], "labels.json", "missing")


def test_truncated_weights_file(capsys, model_dir, tiny_corpus):  # noqa: F811
    clip = str(next((tiny_corpus / "spk0").glob("*.wav")))
    w = model_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    fails(capsys, ["predict", str(model_dir), clip], "model.safetensors")
