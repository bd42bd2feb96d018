"""Ablation tables from fake run folders (no training): paper-shaped markdown, CSV, PNG, folds run in parts."""

import json
import math

import pandas as pd
import pytest
import yaml

from serkit.ablation.spec import load_table
from serkit.ablation.tables import row_result, write_table
from serkit.errors import ConfigError

GRID = {"mix": {"none": {"label": "off"}, "eam": {"label": "EAM"}},
        "pool": {"mean": {"label": "Mean"}, "flam": {"label": "FLAM"}}}


def _results(folder, metrics_by_fold: dict, wall=None):
    folder.mkdir(parents=True, exist_ok=True)
    res = {"folds": [{"fold": k, "metrics": m} for k, m in metrics_by_fold.items()]}
    if wall is not None:
        res["wall_seconds"] = wall
    (folder / "results.json").write_text(json.dumps(res))


def _table(tmp_path, layout, only=None):
    spec = {"grid": GRID, "layout": layout, "title": "T", "caption": "What the numbers are."}
    if only:
        spec["only"] = only
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump({"tables": {"t": spec}}, sort_keys=False))
    return load_table(tmp_path / "rows.yaml", "x", {}, "t")


def test_a_grid_table_has_a_line_per_row_with_its_axis_labels(tmp_path):
    out = tmp_path / "abl"
    _results(out / "eam-flam", {0: {"ua": 0.6, "wa": 0.7}, 1: {"ua": 0.8, "wa": 0.9}}, wall=30.4)
    table = _table(tmp_path, {"metrics": ["ua", "wa"]}, only=["none-mean", "eam-flam"])
    md = write_table(out, table, "classification", "Title", "Config c: shared.")
    assert md.startswith("# Title\n\nConfig c: shared. What the numbers are. Mean ± std")
    assert "| row | mix | pool | folds | UA (%) | WA (%) | wall s |" in md
    assert "| eam-flam | EAM | FLAM | 2 (0 1) | 70.00 ± 14.14 | 80.00 ± 14.14 | 30 |" in md
    assert "| none-mean | off | Mean |  | not run | not run |  |" in md
    df = pd.read_csv(out / "t.csv")
    assert list(df["row"]) == ["none-mean", "eam-flam"] and list(df["mix"]) == ["off", "EAM"]
    assert math.isclose(df["ua_mean"].iloc[1], 70.0) and df["folds"].iloc[0] == 0
    assert (out / "t.png").read_bytes()[:4] == b"\x89PNG" and "![t](t.png)" in md


def test_a_layout_with_columns_spreads_an_axis_over_the_columns(tmp_path):
    out = tmp_path / "abl"
    _results(out / "none-flam", {0: {"ua": 0.25}})
    _results(out / "eam-mean", {0: {"ua": 0.5}})
    table = _table(tmp_path, {"rows": ["mix"], "columns": "pool", "metrics": ["ua"]},
                   only=["none-mean", "none-flam", "eam-mean"])
    md = write_table(out, table, "classification", "T")
    assert "| mix | Mean | FLAM |" in md
    assert "| off | not run | 25.00 ± 0.00 |" in md and "| EAM | 50.00 ± 0.00 | - |" in md  # eam-flam: no row
    assert (out / "t.png").exists()


def test_no_finished_row_writes_the_table_but_no_figure(tmp_path):
    md = write_table(tmp_path, _table(tmp_path, {}), "regression", "T")
    assert "CCC (%)" in md and md.count("| not run |") == 4 and not (tmp_path / "t.png").exists()


def test_folds_run_in_parts_count_once_and_disagreeing_copies_are_refused(tmp_path):
    """results.json of the last part (folds 2, 3) plus fold folders of an earlier part (0, 1) copied in."""
    run = tmp_path / "row"
    _results(run, {2: {"ua": 0.6}, 3: {"ua": 0.8}}, wall=5.0)
    for k, ua in ((0, 0.2), (1, 0.4), (2, 0.6)):
        (run / f"fold{k}").mkdir()
        (run / f"fold{k}" / "result.json").write_text(json.dumps({"fold": k, "metrics": {"ua": ua}}))
    res = row_result(run)
    assert res["folds"] == [0, 1, 2, 3] and math.isclose(res["mean"]["ua"], 0.5) and res["seconds"] == 5.0
    (run / "fold2" / "result.json").write_text(json.dumps({"fold": 2, "metrics": {"ua": 0.9}}))
    with pytest.raises(ConfigError, match="fold 2 of row"):
        row_result(run)
    assert row_result(tmp_path / "nothing") is None
