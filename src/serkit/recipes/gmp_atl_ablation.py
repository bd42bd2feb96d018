"""GMP-ATL Tables 3 and 4 in one command: rows = stage sets / stage-3 loss / clustering layer, stages shared.

    python -m serkit.recipes.gmp_atl_ablation CONFIG --out DIR [--rows stage1,no_gmp,full,ce]
        [--layers=-1,-5] [--set KEY=VALUE ...] [--folds 0,1] [--table NAME] [--merge]

Rows (every one a resumable ``run_cv`` of the ``gmp_atl`` recipe in ``DIR/<row>/``, ``DIR/<row>-folds0_1/`` with
``--folds 0,1``; all share
``DIR/stages/fold<k>/``, so a stage that several rows need, e.g. stage 1 for all of them or the stage 2 of the
config's own layer, is trained once per fold):

==============  =====================================================================================
stage1          stage 1 only (BiLSTM multi-task head, CE emotion + gender); its test scores
no_gmp_ce       stages 1 + 3 without GMPs, stage 3 with CE (Table 3 row 1)
no_gmp          stages 1 + 3 without GMPs, AM-softmax (Table 3 row 2)
ce              all three stages, stage 3 with CE instead of AM-softmax (Table 3 row 3)
full            all three stages, AM-softmax, the config's clustering layer (Table 3 row 4)
layer:L         all three stages with GMPs from hidden state L (Table 4; ``--layers`` adds these rows)
==============  =====================================================================================

``DIR/table.md`` and ``DIR/table.csv`` (``--table NAME`` for another name, e.g. a layer table on fewer folds): GMPs, stage-3 loss, layer, folds, UA and WA mean ± std over folds (%),
plus wall seconds per row (stages reused from an earlier row cost nothing there).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import pandas as pd

from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.io import atomic_write_text
from serkit.recipes.ablation import percent_mean_std, split_list

ROWS = ("stage1", "no_gmp_ce", "no_gmp", "ce", "full")
DEFAULT_ROWS = ("stage1", "no_gmp", "full", "ce")


def row_config(base: dict, row: str, stage_root: str) -> dict:
    """The ``base`` config (validated) turned into one table row."""
    from serkit.recipes.gmp_atl import gmp_options

    cfg = copy.deepcopy(base)
    cfg["recipe"] = "gmp_atl"
    opts = gmp_options(cfg)
    ro = copy.deepcopy(cfg.get("recipe_options") or {})
    ro["stage_root"] = stage_root
    for k in ("stage3", "cluster"):
        ro[k] = dict(ro.get(k) or {})
    if row == "stage1":
        ro["stages"] = [1]
    elif row in ("no_gmp", "no_gmp_ce"):
        ro["stages"] = [1, 3]
    elif row in ("full", "ce") or row.startswith("layer:"):
        ro["stages"] = [1, 2, 3]
    else:
        raise ConfigError(f"unknown row {row!r}; choose from {', '.join(ROWS)} or layer:L")
    ro["stage3"]["loss"] = "cross_entropy" if row in ("ce", "no_gmp_ce") else "am_softmax"
    if row.startswith("layer:"):
        ro["cluster"]["layer"] = int(row.split(":", 1)[1])
    else:
        ro["cluster"]["layer"] = int(opts.cluster.layer)
    cfg["recipe_options"] = ro
    cfg["name"] = f"{base['name']}-{row.replace(':', '')}"
    return cfg




def describe_row(cfg: dict, row: str) -> dict:
    ro = cfg["recipe_options"]
    stages = ro["stages"]
    return {"row": row, "stages": "+".join(map(str, stages)), "gmps": 2 in stages,
            "loss": "CE (stage 1)" if stages == [1] else ("AMS" if ro["stage3"]["loss"] == "am_softmax" else "CE"),
            "layer": ro["cluster"]["layer"] if 2 in stages else "-"}


def make_table(rows: list[dict]) -> tuple[str, pd.DataFrame]:
    recs = []
    lines = ["| row | stages | GMPs | loss | layer | folds | UA (%) | WA (%) | wall s |", "|" + "---|" * 9]
    for r in rows:
        recs.append({k: r[k] for k in ("row", "stages", "gmps", "loss", "layer", "folds", "seconds")} |
                    {"ua_mean": 100 * r["mean"].get("ua", float("nan")), "ua_std": 100 * r["std"].get("ua", float("nan")),
                     "wa_mean": 100 * r["mean"].get("wa", float("nan")), "wa_std": 100 * r["std"].get("wa", float("nan"))})
        lines.append(f"| {r['row']} | {r['stages']} | {'✓' if r['gmps'] else '-'} | {r['loss']} | {r['layer']} | "
                     f"{r['folds']} | {percent_mean_std(r['mean'], r['std'], 'ua')} | {percent_mean_std(r['mean'], r['std'], 'wa')} | "
                     f"{'-' if r['seconds'] != r['seconds'] else format(r['seconds'], '.0f')} |")
    return "\n".join(lines), pd.DataFrame(recs)


def run_ablation(config, out_dir, rows=DEFAULT_ROWS, layers=(), overrides=None, folds_only=None,
                 log=print, table: str = "table") -> tuple[str, pd.DataFrame]:
    """Run every row (resumable, stages shared under ``DIR/stages``); write ``table.md`` / ``table.csv``."""
    from serkit.train.cv import run_cv

    base = load_config(config, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(rows) + [f"layer:{int(L)}" for L in layers]
    done, md, df = [], "", None
    for row in names:
        cfg = row_config(base, row, str(out / "stages"))
        t = time.time()
        log(f"== {row}")
        sub = row.replace(":", "") + ("" if folds_only is None else "-folds" + "_".join(map(str, folds_only)))
        summary = run_cv(cfg, out / sub, folds_only=folds_only, log=log)
        rec = {**describe_row(cfg, row), "folds": len(summary["folds"]), "mean": summary["mean"],
               "std": summary["std"], "seconds": round(time.time() - t, 1)}
        done.append(rec)
        log(f"   {row}: UA {percent_mean_std(rec['mean'], rec['std'], 'ua')}, WA {percent_mean_std(rec['mean'], rec['std'], 'wa')} "
            f"[{rec['seconds']:.0f} s]")
        md, df = make_table(done)
        atomic_write_text(out / f"{table}.md", _header(base, folds_only) + md + "\n")
        atomic_write_text(out / f"{table}.csv", df.to_csv(index=False))
    atomic_write_text(out / f"{table}-rows.json", json.dumps(done, indent=1))
    return md, df


def merge_parts(config, out_dir, rows=DEFAULT_ROWS, layers=(), overrides=None, table: str = "table",
                log=print) -> tuple[str, pd.DataFrame]:
    """One table from rows run in parts (``--folds`` in several processes or machines): every
    ``DIR/<row>[-folds...]/fold<k>/result.json`` of a row counts once per fold; a fold found twice must agree.
    Wall seconds are the sum of the parts' row times where their ``<table>-rows.json`` recorded them."""
    from serkit.metrics import mean_std

    base = load_config(config, overrides)
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    for f in out.glob("*-rows.json"):
        for r in json.loads(f.read_text()):
            seconds[r["row"]] = seconds.get(r["row"], 0.0) + float(r.get("seconds") or 0.0)
    done = []
    for row in list(rows) + [f"layer:{int(L)}" for L in layers]:
        sub = row.replace(":", "")
        per_fold: dict[int, dict] = {}
        for d in [out / sub, *sorted(out.glob(f"{sub}-folds*"))]:
            for rf in sorted(d.glob("fold*/result.json")):
                r = json.loads(rf.read_text())
                k = int(r["fold"])
                if k in per_fold and per_fold[k]["metrics"] != r["metrics"]:
                    raise ConfigError(f"merge: fold {k} of row {row} differs between parts ({rf})")
                per_fold[k] = r
        if not per_fold:
            log(f"merge: no folds for row {row}; skipped")
            continue
        cfg = row_config(base, row, str(out / "stages"))
        mean, std = mean_std([per_fold[k]["metrics"] for k in sorted(per_fold)])
        done.append({**describe_row(cfg, row), "folds": len(per_fold), "mean": mean, "std": std,
                     "seconds": round(seconds.get(row, float("nan")), 1)})
    md, df = make_table(done)
    atomic_write_text(out / f"{table}.md", _header(base) + md + "\n")
    atomic_write_text(out / f"{table}.csv", df.to_csv(index=False))
    return md, df


def _header(base: dict, folds_only=None) -> str:
    enc = base["encoder"].get("id") if isinstance(base["encoder"], dict) else base["encoder"]
    return (f"# GMP-ATL ablation (Tables 3 and 4): {base['name']}\n\n"
            f"Corpus {base['corpus']}, protocol {base['protocol'] or 'corpus default'}, encoder {enc}, features "
            f"{base['features']['source']}{'' if folds_only is None else f', folds {folds_only}'}. Test UA / WA, mean ± std over folds (%); each fold selects on its "
            f"validation speakers. Wall seconds exclude stages reused from earlier rows.\n\n")




def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("--out", required=True, help="output folder (one subfolder per row, shared stages/)")
    p.add_argument("--rows", help=f"comma list from {','.join(ROWS)} (default {','.join(DEFAULT_ROWS)})")
    p.add_argument("--layers", help="clustering layers for Table 4 rows, e.g. --layers=-1,-5 (the config's own layer is the full row)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    p.add_argument("--table", default="table", help="name of the table files in --out (default: table)")
    p.add_argument("--merge", action="store_true",
                   help="train nothing: one table from the rows' fold results already in --out (parts run with --folds)")


def _main(args) -> int:
    from serkit.train.cli import parse_folds

    folds = parse_folds(args.folds)
    layers = [int(x) for x in split_list(args.layers, [])]
    if args.merge:
        md, _ = merge_parts(args.config, args.out, split_list(args.rows, DEFAULT_ROWS), layers, args.set, args.table)
        print(md)
        return 0
    md, _ = run_ablation(args.config, args.out, split_list(args.rows, DEFAULT_ROWS), layers, args.set, folds,
                         table=args.table)
    print(md)
    print(f"table -> {args.out}/{args.table}.md, {args.out}/{args.table}.csv")
    return 0


def add_parsers(sub) -> None:
    """``serkit ablate-gmp-atl`` (the CLI wires this in)."""
    p = sub.add_parser("ablate-gmp-atl", help="GMP-ATL Tables 3/4: stage sets, loss, clustering layer + table")
    _add_arguments(p)
    p.set_defaults(func=_main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serkit.recipes.gmp_atl_ablation",
                                description=__doc__.split("\n")[0])
    _add_arguments(p)
    return _main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
