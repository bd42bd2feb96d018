"""A recipe's ablation rows file, ``configs/ablations/<recipe>.yaml``: named rows and named tables, all data::

    rows:                                  # `serkit ablate CONFIG --out DIR [--rows a,b]`
      NAME: {note: TEXT, set: [KEY=VALUE, ...], terms: [TERM, ...]}
    tables:                                # `serkit ablate CONFIG --out DIR --table NAME`
      NAME:
        title: TEXT                        # heading of the table (optional)
        caption: TEXT                      # paragraph under the heading (optional)
        rows: [ROW, ...]                   # rows of `rows:`, in this order ...
        grid:                              # ... or the cartesian product of named axes, in axis order
          AXIS: {VALUE: {label: TEXT, note: TEXT, set: [KEY=VALUE, ...], terms: [TERM, ...]}, ...}
        only: [ROW, ...]                   # a grid's rows to run, in this order (default: the whole product)
        layout: {rows: [AXIS, ...], columns: AXIS, metrics: [KEY, ...], metric_labels: {KEY: TEXT},
                 config: {TITLE: dotted.key, ...}}

A grid row is named by its values joined with ``-`` (``eam-flam-kc``); its overrides are its values' ``set`` lists in
axis order (a later axis overrides an earlier one) plus the ``terms`` of the one value that gives any. ``terms`` is
a row's objective: each entry names a term of the config's objective (by ``key`` or ``name``, with that term's
options) or is a whole term ``{name: ...}``, so a row that drops or adds a loss keeps every other term as the config
tunes it. ``layout``: ``rows`` are the axes that label a table line (default: every axis but ``columns``);
``columns`` spreads one axis over the columns (then one metric fills the cells); ``metrics`` are result keys
(default: the task's primary metrics); ``config`` adds columns of each row's resolved setting (``augment.mode``). Every
row runs in ``DIR/<row>/``, so rows of one name in two tables share their run when they resolve to the same config
(``run_cv`` refuses a folder whose finished folds used another).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serkit.errors import ConfigError

#: where a recipe's rows live, relative to a config's corpus folder: ``configs/ablations/<recipe>.yaml``
ROWS_DIR = "ablations"
#: the table of ``rows:`` (no ``--table``): its files are ``DIR/ablation.md`` / ``.csv`` / ``.png``
DEFAULT_TABLE = "ablation"
_VALUE_KEYS = {"label", "note", "set", "terms"}
_TABLE_KEYS = {"title", "caption", "rows", "grid", "only", "layout"}
_LAYOUT_KEYS = {"rows", "columns", "metrics", "metric_labels", "config"}


@dataclass
class Row:
    """One run of the ablation: ``DIR/<name>/`` is the config with ``overrides``."""

    name: str
    overrides: list[str]
    note: str = ""
    values: dict[str, str] = field(default_factory=dict)  #: axis -> the value's label (grid rows)


@dataclass
class Layout:
    """How a table lays out its rows: line labels, an axis over the columns, the metrics shown."""

    rows: list[str]
    columns: str | None = None
    metrics: list[str] | None = None  #: None: the task's primary metrics
    metric_labels: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)  #: column title -> dotted key of the row's config


@dataclass
class Table:
    """A named table of a rows file: its rows in order and how they are laid out."""

    name: str
    rows: list[Row]
    axes: dict[str, list[str]]  #: axis -> value labels in order (empty for a list of rows)
    layout: Layout
    title: str = ""
    caption: str = ""


def rows_file(config_path, recipe: str) -> Path:
    """``configs/ablations/<recipe>.yaml`` for a config under ``configs/<corpus>/``."""
    return Path(config_path).resolve().parent.parent / ROWS_DIR / f"{recipe}.yaml"


def _read(path, recipe: str) -> tuple[Path, dict]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no ablation rows for recipe {recipe!r}: {p} not found (rows: {{name: [KEY=VALUE, ...]}})")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict) or not (raw.get("rows") or raw.get("tables")):
        raise ConfigError(f"{p}: expected 'rows: {{name: [KEY=VALUE, ...]}}' and/or 'tables: {{name: ...}}'")
    unknown = sorted(set(raw) - {"rows", "tables"})
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {unknown}; a rows file has 'rows:' and 'tables:'")
    for key in ("rows", "tables"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{p}: '{key}' must be a mapping of names, got {raw[key]!r}")
    return p, raw


def _own_terms(base: dict | None) -> dict[str, dict]:
    own: dict[str, dict] = {}
    for t in (base or {}).get("objective") or []:
        own.setdefault(t.get("key", t["name"]), t)
        own.setdefault(t["name"], t)
    return own


def _sets(where: str, spec) -> list[str]:
    sets = spec.get("set", []) if isinstance(spec, dict) else spec
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise ConfigError(f"{where}: expected a list of KEY=VALUE overrides, got {spec!r}")
    return list(sets)


def _objective(where: str, terms, own: dict[str, dict]) -> str:
    """The ``objective=[...]`` override of a ``terms`` list."""
    if not isinstance(terms, list):
        raise ConfigError(f"{where}: 'terms' must be a list, got {terms!r}")
    objective = []
    for t in terms:
        if isinstance(t, dict) and "name" in t:
            objective.append(dict(t))
        elif isinstance(t, str) and t in own:
            objective.append(dict(own[t]))
        else:
            raise ConfigError(f"{where}: term {t!r} is neither a term of the config's objective ({sorted(own)}) "
                              f"nor a term {{name: ...}}")
    return "objective=" + json.dumps(objective)


def _named_rows(p: Path, raw: dict, own: dict) -> dict[str, Row]:
    out = {}
    for name, spec in (raw.get("rows") or {}).items():
        where = f"{p}: row {name!r}"
        sets = _sets(where, spec)
        if isinstance(spec, dict) and spec.get("terms") is not None:
            sets.append(_objective(where, spec["terms"], own))
        out[str(name)] = Row(str(name), sets, str(spec.get("note", "")) if isinstance(spec, dict) else "")
    return out


def _grid_rows(where: str, grid, only, own: dict) -> tuple[list[Row], dict[str, list[str]]]:
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, dict) and v for v in grid.values()):
        raise ConfigError(f"{where}: 'grid' must map each axis to {{value: {{set: [...], terms: [...]}}}}")
    axes: dict[str, list[tuple[str, dict]]] = {}
    for axis, values in grid.items():
        axes[str(axis)] = []
        for value, spec in values.items():
            spec = {"set": spec} if isinstance(spec, list) else (spec or {})
            unknown = sorted(set(spec) - _VALUE_KEYS) if isinstance(spec, dict) else [spec]
            if unknown:
                raise ConfigError(f"{where}: grid.{axis}.{value}: unknown key(s) {unknown}; "
                                  f"allowed {sorted(_VALUE_KEYS)}")
            axes[str(axis)].append((str(value), spec))
    rows = []
    for combo in itertools.product(*axes.values()):
        name = "-".join(v for v, _ in combo)
        sets, terms = [], [(v, s["terms"]) for v, s in combo if s.get("terms") is not None]
        for v, s in combo:
            sets += _sets(f"{where}: grid value {v!r}", s)
        if len(terms) > 1:
            raise ConfigError(f"{where}: row {name!r}: values {[v for v, _ in terms]} both give 'terms'; one may")
        if terms:
            sets.append(_objective(f"{where}: grid value {terms[0][0]!r}", terms[0][1], own))
        note = ", ".join(s["note"] for _, s in combo if s.get("note"))
        rows.append(Row(name, sets, note, {a: str(s.get("label", v)) for a, (v, s) in zip(axes, combo)}))
    if only is not None:
        by_name = {r.name: r for r in rows}
        bad = [n for n in only if n not in by_name] if isinstance(only, list) else [only]
        if bad:
            raise ConfigError(f"{where}: 'only' names {bad}, not rows of the grid (e.g. {rows[0].name!r})")
        rows = [by_name[n] for n in only]
    return rows, {a: [str(s.get("label", v)) for v, s in vs] for a, vs in axes.items()}


def _layout(where: str, raw, axes: list[str]) -> Layout:
    raw = raw or {}
    unknown = sorted(set(raw) - _LAYOUT_KEYS) if isinstance(raw, dict) else [raw]
    if unknown:
        raise ConfigError(f"{where}: layout: unknown key(s) {unknown}; allowed {sorted(_LAYOUT_KEYS)}")
    columns = raw.get("columns")
    rows = raw.get("rows", [a for a in axes if a != columns])
    rows = [rows] if isinstance(rows, str) else rows
    bad = [a for a in [*rows, *([columns] if columns else [])] if a not in axes]
    if bad:
        raise ConfigError(f"{where}: layout names axes {bad}; the table's axes are {axes}")
    metrics = raw.get("metrics")
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if columns and (not metrics or len(metrics) != 1):
        raise ConfigError(f"{where}: layout.columns {columns!r} needs exactly one metric (layout.metrics: [ua])")
    config = raw.get("config") or {}
    if not isinstance(config, dict) or not all(isinstance(v, str) for v in config.values()):
        raise ConfigError(f"{where}: layout.config must map column titles to dotted config keys, got {config!r}")
    return Layout(list(rows), columns, metrics, dict(raw.get("metric_labels") or {}), dict(config))


def _table(p: Path, name: str, spec, named: dict[str, Row], own: dict) -> Table:
    where = f"{p}: table {name!r}"
    if not isinstance(spec, dict) or ("rows" in spec) == ("grid" in spec):
        raise ConfigError(f"{where}: expected either 'rows: [ROW, ...]' or 'grid: {{axis: {{value: ...}}}}'")
    unknown = sorted(set(spec) - _TABLE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed {sorted(_TABLE_KEYS)}")
    if "rows" in spec:
        bad = [r for r in spec["rows"] if r not in named] if isinstance(spec["rows"], list) else [spec["rows"]]
        if bad:
            raise ConfigError(f"{where}: rows {bad} are not rows of the file ({list(named)})")
        rows, axes = [named[r] for r in spec["rows"]], {}
    else:
        rows, axes = _grid_rows(where, spec["grid"], spec.get("only"), own)
    return Table(name, rows, axes, _layout(where, spec.get("layout"), list(axes)), str(spec.get("title", "")),
                 str(spec.get("caption", "")))


def load_tables(path, recipe: str, base: dict | None = None) -> dict[str, Table]:
    """Every table of a rows file: ``ablation`` (its ``rows:``, when it has any) and its named ``tables:``.

    ``base`` (the resolved config) supplies the terms that ``terms`` names."""
    p, raw = _read(path, recipe)
    own = _own_terms(base)
    named = _named_rows(p, raw, own)
    tables = {DEFAULT_TABLE: Table(DEFAULT_TABLE, list(named.values()), {}, Layout([]))} if named else {}
    for name, spec in (raw.get("tables") or {}).items():
        if str(name) == DEFAULT_TABLE:
            raise ConfigError(f"{p}: table name {DEFAULT_TABLE!r} is the table of 'rows:'; choose another")
        tables[str(name)] = _table(p, str(name), spec, named, own)
    return tables


def load_table(path, recipe: str, base: dict | None = None, table: str | None = None) -> Table:
    """One table of a rows file (``None``: the table of its ``rows:``)."""
    tables = load_tables(path, recipe, base)
    name = table or DEFAULT_TABLE
    if name not in tables:
        raise ConfigError(f"{path}: no table {name!r}; tables: {list(tables)}")
    return tables[name]


def load_rows(path, recipe: str, base: dict | None = None) -> dict[str, list[str]]:
    """``{row name: [--set overrides]}`` of a rows file's ``rows:``."""
    tables = load_tables(path, recipe, base)
    return {r.name: r.overrides for r in tables[DEFAULT_TABLE].rows} if DEFAULT_TABLE in tables else {}
