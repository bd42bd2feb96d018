"""The rows file of `serkit ablate`: named rows, list tables, grids of named axes, layouts; mistakes name the key."""

import json

import pytest
import yaml

from serkit.ablation.spec import load_rows, load_table, load_tables
from serkit.errors import ConfigError

BASE = {"objective": [{"name": "kl", "weight": 0.5}, {"name": "center", "dim": 4, "weight": 0.01}]}
GRID = {
    "mix": {"none": {"label": "off", "set": ["augment.name=none"]},
            "eam": {"label": "EAM", "set": ["augment.name=eam"]}},
    "pool": {"mean": ["model.pooling=mean"], "flam": {"set": ["model.pooling=flam"], "note": "attention"}},
    "loss": {"k": {"label": "KL", "terms": ["kl"]}, "kc": {"label": "KL+C", "terms": ["kl", "center"]}},
}


def _write(tmp_path, data) -> str:
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_a_grid_expands_to_the_product_named_by_its_values(tmp_path):
    path = _write(tmp_path, {"tables": {"g": {"grid": GRID, "layout": {"rows": ["mix", "pool"], "columns": "loss",
                                                                        "metrics": ["ua"]}}}})
    table = load_table(path, "mll", BASE, "g")
    assert [r.name for r in table.rows] == ["none-mean-k", "none-mean-kc", "none-flam-k", "none-flam-kc",
                                            "eam-mean-k", "eam-mean-kc", "eam-flam-k", "eam-flam-kc"]
    row = {r.name: r for r in table.rows}["eam-flam-kc"]
    assert row.overrides[:2] == ["augment.name=eam", "model.pooling=flam"]
    assert json.loads(row.overrides[2].split("=", 1)[1]) == BASE["objective"]  # the config's terms, options kept
    assert row.values == {"mix": "EAM", "pool": "flam", "loss": "KL+C"} and row.note == "attention"
    assert table.axes["mix"] == ["off", "EAM"] and table.layout.columns == "loss"


def test_only_picks_and_orders_grid_rows_and_a_later_axis_overrides_an_earlier_one(tmp_path):
    grid = {"ext": {"cnn": {"set": ["model.emotion_extractor=cnn", "model.speaker_extractor=cnn"]}},
            "var": {"off": {"set": ["model.speaker_extractor=none"], "terms": ["kl"]}, "full": {}}}
    path = _write(tmp_path, {"tables": {"t": {"grid": grid, "only": ["cnn-full", "cnn-off"]}}})
    table = load_table(path, "hcld", BASE, "t")
    assert [r.name for r in table.rows] == ["cnn-full", "cnn-off"]
    assert table.rows[0].overrides == ["model.emotion_extractor=cnn", "model.speaker_extractor=cnn"]
    assert table.rows[1].overrides[-2] == "model.speaker_extractor=none"  # applied after the extractor's
    assert table.layout.rows == ["ext", "var"] and table.layout.metrics is None


def test_rows_and_list_tables_keep_the_file_order(tmp_path):
    rows = {"b": {"note": "second", "set": ["x.y=1"]}, "a": {"terms": ["center", {"name": "focal", "gamma": 2}]}}
    path = _write(tmp_path, {"rows": rows, "tables": {"pick": {"rows": ["a"], "layout": {"metrics": ["wa"]}}}})
    tables = load_tables(path, "r", BASE)
    assert list(tables) == ["ablation", "pick"] and [r.name for r in tables["ablation"].rows] == ["b", "a"]
    assert load_rows(path, "r", BASE)["b"] == ["x.y=1"]
    assert json.loads(tables["pick"].rows[0].overrides[0].split("=", 1)[1]) == [BASE["objective"][1],
                                                                                 {"name": "focal", "gamma": 2}]


@pytest.mark.parametrize(("data", "message"), [
    ({"tables": {"g": {"grid": GRID, "layout": {"columns": "loss"}}}}, "exactly one metric"),
    ({"tables": {"g": {"grid": GRID, "layout": {"rows": ["nope"]}}}}, "axes \\['nope'\\]"),
    ({"tables": {"g": {"grid": GRID, "only": ["eam-max-k"]}}}, "'eam-max-k'"),
    ({"tables": {"g": {"grid": GRID, "layout": {"config": ["augment.mode"]}}}}, "layout.config"),
    ({"tables": {"g": {"grid": {"a": {"x": {"terms": ["kl"]}}, "b": {"y": {"terms": ["kl"]}}}}}}, "one may"),
    ({"tables": {"g": {"grid": {"a": {"x": {"sett": []}}}}}}, "'sett'"),
    ({"tables": {"g": {"rows": ["missing"]}}, "rows": {"r": []}}, "'missing'"),
    ({"tables": {"g": {"grid": GRID, "rows": []}}}, "either 'rows"),
    ({"tables": {"ablation": {"rows": []}}, "rows": {"r": []}}, "'ablation'"),
    ({"rows": {"r": ["no-equals-sign"]}}, "row 'r'"),
    ({"rows": {"r": {"terms": ["focal"]}}}, "'focal'"),
    ({"rows": {"r": []}, "tabels": {}}, "'tabels'"),
])
def test_mistakes_name_the_file_and_key(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as err:
        load_tables(path, "r", BASE)
    assert path in str(err.value)


def test_an_unknown_table_lists_the_tables(tmp_path):
    path = _write(tmp_path, {"rows": {"r": []}, "tables": {"g": {"grid": GRID}}})
    with pytest.raises(ConfigError, match=r"no table 'h'; tables: \['ablation', 'g'\]"):
        load_table(path, "r", BASE, "h")
