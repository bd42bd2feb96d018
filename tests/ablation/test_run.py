"""`serkit ablate --table`: a grid of rows run end to end on the tiny corpus (one fold, one epoch each)."""

import json

import yaml

from tests.train.conftest import tiny_config, tiny_corpus  # noqa: F401


def test_serkit_ablate_runs_a_grid_table_and_writes_it(tiny_corpus, tmp_path, capsys):  # noqa: F811
    from serkit.cli import main

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "normalize": "speaker"},
                      train={"epochs": 1, "batch_size": 8, "lr": 0.01, "patience": 5, "progress": False})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    grid = {"norm": {"global": {"label": "none", "set": ["features.normalize=none"]},
                     "spk": {"label": "speaker", "set": ["features.normalize=speaker"]}},
            "head": {"linear": {"label": "linear", "set": ["model.hidden=[]"]}}}
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"tables": {"g": {"grid": grid, "layout": {"rows": ["head"], "columns": "norm",
                                                                              "metrics": ["ua"]}}}}, sort_keys=False))
    out = tmp_path / "abl"
    args = ["ablate", str(config), "--out", str(out), "--rows-file", str(rows), "--table", "g", "--folds", "0"]
    assert main(args) == 0
    for row, normalisation in (("global-linear", "none"), ("spk-linear", "speaker")):
        res = json.loads((out / row / "results.json").read_text())
        assert res["feature_normalisation"].startswith(normalisation) and len(res["folds"]) == 1, (row, res)
    md = (out / "g.md").read_text()
    assert "| head | none | speaker |" in md and "| not run |" not in md
    assert "Config tiny: corpus csv, protocol speaker_kfold, encoder fbank-40." in md
    ua = json.loads((out / "spk-linear" / "results.json").read_text())["mean"]["ua"]
    assert ("| linear | "
            f"{100 * json.loads((out / 'global-linear' / 'results.json').read_text())['mean']['ua']:.2f}") in md
    assert f"{100 * ua:.2f} ± 0.00 |" in md and (out / "g.png").exists() and (out / "g.csv").exists()
    capsys.readouterr()
    assert main(args[:-2] + ["--table-only"]) == 0 and (out / "g.md").read_text() == md
    assert main(args[:-2] + ["--table-only", "--tsne", "nope"]) == 2
    assert "--tsne nope: no finished row" in capsys.readouterr().err
    assert main(args[:6] + ["--table", "h"]) == 2
    assert "no table 'h'; tables: ['g']" in capsys.readouterr().err
