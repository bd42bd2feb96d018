"""Helpers shared by the ablation runners (``serkit ablate-*``): table cells and comma-list options."""

from __future__ import annotations


def percent_mean_std(mean: dict, std: dict, key: str, missing: str = "-") -> str:
    """``"75.33 ± 5.62"`` (fractions shown in %) for ``key``; ``missing`` when absent or NaN."""
    if key not in mean or mean[key] != mean[key]:
        return missing
    return f"{100 * mean[key]:.2f} ± {100 * std.get(key, 0.0):.2f}"


def split_list(s: str | None, default) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``default`` (copied) when ``s`` is empty."""
    return [x.strip() for x in s.split(",") if x.strip()] if s else list(default)


# -- `serkit ablate CONFIG --rows ...`: rows per recipe are data beside the configs ------------------------------
#: where a recipe's rows live, relative to a config's corpus folder: ``configs/ablations/<recipe>.yaml``
ROWS_DIR = "ablations"


def rows_file(config_path, recipe: str):
    """``configs/ablations/<recipe>.yaml`` for a config under ``configs/<corpus>/``."""
    from pathlib import Path

    return Path(config_path).resolve().parent.parent / ROWS_DIR / f"{recipe}.yaml"


def load_rows(path, recipe: str, base: dict | None = None) -> dict[str, list[str]]:
    """``{row name: [--set overrides]}`` from a rows file: ``rows: {name: {set: [...], terms: [...], note: ...}}``
    or ``rows: {name: [...]}``.

    ``terms`` (needs ``base``, the resolved config) is the row's objective: each entry names a term of the base
    config's objective (by ``key`` or ``name``, with that term's options) or is a whole term (``{name: ...}``);
    so a row that drops or adds a loss keeps every other term exactly as the config tunes it."""
    import json
    from pathlib import Path

    import yaml

    from serkit.errors import ConfigError

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no ablation rows for recipe {recipe!r}: {p} not found (rows: {{name: [KEY=VALUE, ...]}})")
    raw = yaml.safe_load(p.read_text()) or {}
    rows = raw.get("rows")
    if not isinstance(rows, dict) or not rows:
        raise ConfigError(f"{p}: expected 'rows: {{name: [KEY=VALUE, ...]}}'")
    own = {}
    for t in (base or {}).get("objective") or []:
        own.setdefault(t.get("key", t["name"]), t)
        own.setdefault(t["name"], t)
    out = {}
    for name, spec in rows.items():
        sets = spec.get("set", []) if isinstance(spec, dict) else spec
        if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
            raise ConfigError(f"{p}: row {name!r}: expected a list of KEY=VALUE overrides, got {spec!r}")
        sets = list(sets)
        terms = spec.get("terms") if isinstance(spec, dict) else None
        if terms is not None:
            objective = []
            for t in terms:
                if isinstance(t, dict) and "name" in t:
                    objective.append(dict(t))
                elif isinstance(t, str) and t in own:
                    objective.append(dict(own[t]))
                else:
                    raise ConfigError(f"{p}: row {name!r}: term {t!r} is neither a term of the config's objective "
                                      f"({sorted(own)}) nor a term {{name: ...}}")
            sets.append("objective=" + json.dumps(objective))
        out[str(name)] = sets
    return out


def run_rows(config, out_dir, rows: list[str] | None = None, overrides: list[str] | None = None,
             folds_only: list[int] | None = None, rows_path=None, log=print):
    """Every row as a resumable ``run_cv`` in ``DIR/<row>/`` (stages shared in ``DIR/stages`` for recipes with a
    stage root); ``DIR/ablation.md`` / ``.csv``: the primary metrics' mean ± std over folds and wall seconds."""
    import time
    from pathlib import Path

    import pandas as pd

    from serkit.config import load_config
    from serkit.errors import ConfigError
    from serkit.io import atomic_write_text
    from serkit.recipes.catalog import get_recipe
    from serkit.train.cv import run_cv

    base = load_config(config, overrides)
    recipe = get_recipe(base["recipe"])
    table = load_rows(rows_path or rows_file(config, base["recipe"]), base["recipe"], base)
    names = rows or list(table)
    bad = [r for r in names if r not in table]
    if bad:
        raise ConfigError(f"unknown row(s) {bad}; rows of {base['recipe']}: {list(table)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared = []
    if "stage_root" in getattr(recipe.options_class, "__dataclass_fields__", {}):
        shared = [f"recipe_options.stage_root={out / 'stages'}"]
    keys = ["ua", "wa", "macro_f1"] if base["task"] == "classification" else ["ccc_mean"]
    recs, lines = [], [f"# {base['name']}: ablation ({base['recipe']})", "",
                       "| row | overrides | folds | " + " | ".join(keys) + " | wall s |", "|" + "---|" * (4 + len(keys))]
    for name in names:
        t = time.time()
        log(f"== {name}: {' '.join(table[name]) or '(the config)'}")
        summary = run_cv(config, out / name.replace(":", ""), list(overrides or []) + shared + table[name],
                         folds_only=folds_only, log=log)
        sec = round(time.time() - t, 1)
        rec = {"row": name, "overrides": " ".join(table[name]), "folds": len(summary["folds"]), "seconds": sec}
        for k in keys:
            rec[f"{k}_mean"], rec[f"{k}_std"] = summary["mean"].get(k), summary["std"].get(k)
        recs.append(rec)
        lines.append(f"| {name} | `{rec['overrides']}` | {rec['folds']} | "
                     + " | ".join(percent_mean_std(summary["mean"], summary["std"], k) for k in keys) + f" | {sec:.0f} |")
        atomic_write_text(out / "ablation.md", "\n".join(lines) + "\n")
        atomic_write_text(out / "ablation.csv", pd.DataFrame(recs).to_csv(index=False))
    return "\n".join(lines)


def add_parsers(sub) -> None:
    """``serkit ablate CONFIG --out DIR [--rows a,b] [--set K=V] [--folds 0,1] [--rows-file F]``."""
    p = sub.add_parser("ablate", help="ablation rows of a config's recipe (configs/ablations/<recipe>.yaml)")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="one subfolder per row; ablation.md / ablation.csv")
    p.add_argument("--rows", help="comma list of rows (default: every row of the rows file)")
    p.add_argument("--rows-file", help="rows file (default: configs/ablations/<recipe>.yaml beside the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    p.set_defaults(func=_ablate)


def _ablate(args) -> int:
    from serkit.train.cli import parse_folds

    folds = parse_folds(args.folds)
    from serkit.run_lock import folder_lock

    with folder_lock(args.out):  # one writer per run folder
        md = run_rows(args.config, args.out, split_list(args.rows, []) or None, args.set, folds, args.rows_file)
    print(md)
    print(f"table -> {args.out}/ablation.md, {args.out}/ablation.csv")
    return 0
