"""``serkit ablate CONFIG --out DIR [--table NAME] [--rows a,b]``: every row of a table as a resumable ``run_cv``.

Each row runs in ``DIR/<row>/`` (resumed fold by fold and epoch by epoch after an interruption); a recipe whose
options have a ``stage_root`` shares its stages across rows in ``DIR/stages/`` (a stage that several rows need is
trained once per fold). After every row the table is rewritten: ``DIR/<table>.md`` / ``.csv`` / ``.png``
(:mod:`serkit.ablation.tables`). The rows and tables are data: ``configs/ablations/<recipe>.yaml``
(:mod:`serkit.ablation.spec`).
"""

from __future__ import annotations

from pathlib import Path

from serkit.ablation.spec import DEFAULT_TABLE, load_table, rows_file
from serkit.ablation.tables import percent_mean_std, primary_metrics, write_table


def split_list(s: str | None, default) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``default`` (copied) when ``s`` is empty."""
    return [x.strip() for x in s.split(",") if x.strip()] if s else list(default)


def describe_base(base: dict) -> str:
    """What every row of an ablation shares: config name, corpus, protocol and encoder, in one sentence."""
    corpus = base["corpus"] if isinstance(base["corpus"], str) else "+".join(map(str, base["corpus"]))
    protocol = (base.get("protocol") or {}).get("name", "the corpus default")
    encoders = base["encoder"] if isinstance(base["encoder"], list) else [base["encoder"]]
    names = ", ".join(str(e.get("id")) if isinstance(e, dict) else str(e) for e in encoders)
    return f"Config {base['name']}: corpus {corpus}, protocol {protocol}, encoder {names}."


def run_rows(config, out_dir, rows: list[str] | None = None, overrides: list[str] | None = None,
             folds_only: list[int] | None = None, rows_path=None, log=print, table: str | None = None,
             table_only: bool = False, tsne: list[str] | None = None) -> str:
    """Run the rows of ``table`` (default: the rows file's ``rows:``; ``rows`` picks some of them) and write the
    table; ``table_only``: run nothing, tabulate what ``DIR`` holds. ``tsne``: rows whose test embeddings get a
    t-SNE plot ``DIR/tsne-<row>.png``. Returns the table's markdown."""
    import time

    from serkit.config import load_config
    from serkit.errors import ConfigError
    from serkit.io import atomic_write_text
    from serkit.recipes.catalog import get_recipe
    from serkit.train.cv import run_cv

    base = load_config(config, overrides)
    if rows_path is None and not isinstance(config, (str, Path)):
        raise ConfigError("a config given as a mapping needs the rows file (--rows-file)")
    spec = load_table(rows_path or rows_file(config, base["recipe"]), base["recipe"], base, table)
    known = [r.name for r in spec.rows]
    bad = [r for r in rows or [] if r not in known]
    if bad:
        raise ConfigError(f"unknown row(s) {bad}; rows of table {spec.name!r} ({base['recipe']}): {known}")
    chosen = [r for r in spec.rows if rows is None or r.name in rows]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shared = []
    if "stage_root" in getattr(get_recipe(base["recipe"]).options_class, "__dataclass_fields__", {}):
        shared = [f"recipe_options.stage_root={out / 'stages'}"]
    title = spec.title or f"{base['name']}: {spec.name} ({base['recipe']})"
    context = describe_base(base)
    md = write_table(out, spec, base["task"], title, context)
    key = (spec.layout.metrics or primary_metrics(base["task"]))[0]
    for row in [] if table_only else chosen:
        t = time.time()
        log(f"== {row.name}: {' '.join(row.overrides) or '(the config)'}")
        summary = run_cv(config, out / row.name, list(overrides or []) + shared + row.overrides,
                         folds_only=folds_only, log=log)
        log(f"== {row.name}: {key} {percent_mean_std(summary['mean'], summary['std'], key)} [{time.time() - t:.0f} s]")
        md = write_table(out, spec, base["task"], title, context)
    for name in tsne or []:
        from serkit.ablation.tsne import tsne_plot

        if name not in known or not (out / name / "results.json").exists():
            raise ConfigError(f"--tsne {name}: no finished row {name!r} in {out}")
        scores = tsne_plot(out / name, out / f"tsne-{name}.png")
        md += (f"\n![t-SNE {name}](tsne-{name}.png) silhouette before {scores['before']:.3f}, "
               f"after {scores['after']:.3f}\n")
        atomic_write_text(out / f"{spec.name}.md", md)
    return md


def add_parsers(sub) -> None:
    """``serkit ablate CONFIG --out DIR [--table NAME] [--rows a,b] [--set K=V] [--folds 0,1] [--rows-file F]
    [--table-only] [--tsne a,b]``."""
    p = sub.add_parser("ablate", help="ablation rows and tables of a config's recipe (configs/ablations/<recipe>.yaml)")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="one subfolder per row; DIR/<table>.md / .csv / .png")
    p.add_argument("--table", help="a table of the rows file's 'tables:' (default: its 'rows:', DIR/ablation.md)")
    p.add_argument("--rows", help="comma list of the table's rows to run (default: every row)")
    p.add_argument("--rows-file", help="rows file (default: configs/ablations/<recipe>.yaml beside the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1 (folds run elsewhere into DIR/<row>/ count too)")
    p.add_argument("--table-only", action="store_true", help="run nothing; write the table from the rows in --out")
    p.add_argument("--tsne", help="comma list of rows to draw t-SNE plots of test embeddings for")
    p.set_defaults(func=_ablate)


def _ablate(args) -> int:
    from serkit.run_lock import folder_lock
    from serkit.train.cli import parse_folds

    folds = parse_folds(args.folds)
    with folder_lock(args.out):  # one writer per run folder
        md = run_rows(args.config, args.out, split_list(args.rows, []) or None, args.set, folds, args.rows_file,
                      table=args.table, table_only=args.table_only, tsne=split_list(args.tsne, []))
    print(md)
    name = args.table or DEFAULT_TABLE
    print(f"table -> {args.out}/{name}.md, {args.out}/{name}.csv")
    return 0
