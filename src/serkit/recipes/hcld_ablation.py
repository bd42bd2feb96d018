"""HCLD Table II in one command: rows = extractor x variant, each a resumable ``run_cv`` in its own folder.

    python -m serkit.recipes.hcld_ablation CONFIG --out DIR [--extractors cnn,lstm,transformer]
        [--variants emotion_only,orth,hcld,no_supcon,no_lcl] [--set KEY=VALUE ...] [--folds 0,1] [--table-only]

Variants (HCLD paper, Table II; every one uses the ``hcld`` recipe and model, so the pair sampler, features and
extractor sizes are identical and only the objective, plus the speaker branch for ``emotion_only``, changes):

=============  ==================================================================================================
emotion_only   ``cross_entropy`` only; no speaker branch (``speaker_extractor: none``), so no speaker metrics
orth           ``cross_entropy + hcld_speaker_ce + orthogonality`` (X_e vs X_s, Wang et al. 2022)
hcld           ``cross_entropy + hcld_speaker_ce + icld + supcon + lcl`` (the paper's full L)
no_supcon      HCLD without ``supcon``
no_lcl         HCLD without ``lcl``
=============  ==================================================================================================

The term options (ICLD margin/hinge, temperatures, weights) come from the config's own ``objective:`` when it
has a term of that name (so ``--set`` on the config tunes every variant alike), else the defaults below.
``DIR/<extractor>-<variant>/`` holds each run; ``DIR/table.md`` and ``DIR/table.csv`` the table: emotion WA/UA,
speaker EER of X_s (cosine scoring on the test speakers) and EER of X_e, mean ± std over folds, plus speaker WA/UA
of the speaker head when the protocol is speaker-dependent (all in %). A finished row is read back, a killed row
resumes from its last finished fold/epoch; ``--table-only`` runs nothing and tabulates the finished rows (e.g.
after the rows were run in several invocations). ``serkit ablate-hcld`` is the same command (:func:`add_parsers`).
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

EXTRACTORS = ("cnn", "lstm", "transformer")
VARIANTS = ("emotion_only", "orth", "hcld", "no_supcon", "no_lcl")
VARIANT_LABEL = {"emotion_only": "EMO-only", "orth": "orth", "hcld": "HCLD", "no_supcon": "wo.SupCon",
                 "no_lcl": "wo.LCL"}
DEFAULT_TERMS = {
    "cross_entropy": {"name": "cross_entropy"},
    "hcld_speaker_ce": {"name": "hcld_speaker_ce"},
    "orthogonality": {"name": "orthogonality"},
    "icld": {"name": "icld", "margin": 0.5, "hinge": "text"},
    "supcon": {"name": "supcon", "feature_key": "emotion_features"},
    "lcl": {"name": "lcl"},
}
VARIANT_TERMS = {
    "emotion_only": ["cross_entropy"],
    "orth": ["cross_entropy", "hcld_speaker_ce", "orthogonality"],
    "hcld": ["cross_entropy", "hcld_speaker_ce", "icld", "supcon", "lcl"],
    "no_supcon": ["cross_entropy", "hcld_speaker_ce", "icld", "lcl"],
    "no_lcl": ["cross_entropy", "hcld_speaker_ce", "icld", "supcon"],
}
METRICS = [("wa", "emotion WA"), ("ua", "emotion UA"), ("speaker_eer", "speaker EER (X_s)"),
           ("emotion_feature_eer", "EER of X_e"), ("speaker_wa", "speaker WA"), ("speaker_ua", "speaker UA")]


def variant_config(base: dict, extractor: str, variant: str) -> dict:
    """The ``base`` config (validated) turned into one Table II row."""
    if variant not in VARIANT_TERMS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if extractor not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {extractor!r}; choose from {', '.join(EXTRACTORS)}")
    cfg = copy.deepcopy(base)
    cfg["recipe"] = "hcld"
    cfg["name"] = f"{base['name']}-{extractor}-{variant}"
    model = dict(cfg["model"])
    model["name"] = "hcld"
    model["emotion_extractor"] = extractor
    model["speaker_extractor"] = "none" if variant == "emotion_only" else extractor
    cfg["model"] = model
    own = {t["name"]: t for t in base["objective"] or []}
    cfg["objective"] = [dict(own.get(name, DEFAULT_TERMS[name])) for name in VARIANT_TERMS[variant]]
    return cfg




def make_table(rows: list[dict], speaker_dependent: bool) -> tuple[str, pd.DataFrame]:
    keys = [(k, n) for k, n in METRICS if speaker_dependent or k not in ("speaker_wa", "speaker_ua")]
    records = []
    for r in rows:
        rec = {"extractor": r["extractor"], "variant": VARIANT_LABEL.get(r["variant"], r["variant"]),
               "folds": r["folds"]}
        for k, _ in keys:
            rec[f"{k}_mean"] = 100 * r["mean"][k] if k in r["mean"] else float("nan")
            rec[f"{k}_std"] = 100 * r["std"][k] if k in r["std"] else float("nan")
        records.append(rec)
    df = pd.DataFrame(records)
    head = "| extractor | variant | folds | " + " | ".join(n + " (%)" for _, n in keys) + " |"
    lines = [head, "|" + "---|" * (3 + len(keys))]
    for r in rows:
        lines.append(f"| {r['extractor']} | {VARIANT_LABEL.get(r['variant'], r['variant'])} | {r['folds']} | "
                     + " | ".join(percent_mean_std(r["mean"], r["std"], k) for k, _ in keys) + " |")
    return "\n".join(lines), df


def run_ablation(config, out_dir, extractors=EXTRACTORS, variants=VARIANTS, overrides=None, folds_only=None,
                 log=print, table_only: bool = False) -> tuple[str, pd.DataFrame]:
    """Run every (extractor, variant) row (resumable) and write ``table.md`` / ``table.csv``; returns both.
    ``table_only``: run nothing, tabulate the rows whose ``results.json`` exists."""
    from serkit.train.cv import load_results, run_cv

    base = load_config(config, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, speaker_dependent, md, df = [], False, "", pd.DataFrame()
    for ext in extractors:
        for var in variants:
            cfg = variant_config(base, ext, var)
            t = time.time()
            if table_only:
                if not (out / f"{ext}-{var}" / "results.json").exists():
                    continue
                summary = load_results(out / f"{ext}-{var}")
            else:
                log(f"== {ext} / {var}")
                summary = run_cv(cfg, out / f"{ext}-{var}", folds_only=folds_only, log=log)
            speaker_dependent |= not summary["speaker_independent"]
            rows.append({"extractor": ext, "variant": var, "folds": len(summary["folds"]),
                         "mean": summary["mean"], "std": summary["std"], "seconds": round(time.time() - t, 1)})
            if not table_only:
                log(f"   {ext}/{var}: UA {percent_mean_std(summary['mean'], summary['std'], 'ua')}, "
                    f"speaker EER {percent_mean_std(summary['mean'], summary['std'], 'speaker_eer')} [{time.time() - t:.0f} s]")
            md, df = make_table(rows, speaker_dependent)  # partial table after every row
            atomic_write_text(out / "table.md", _header(base, speaker_dependent) + md + "\n")
            atomic_write_text(out / "table.csv", df.to_csv(index=False))
    atomic_write_text(out / "rows.json", json.dumps(rows, indent=1))
    return md, df


def _header(base: dict, speaker_dependent: bool) -> str:
    proto = base["protocol"] or "corpus default"
    return (f"# HCLD ablation (Table II shape): {base['name']}\n\n"
            f"Corpus {base['corpus']}, protocol {proto} "
            f"({'speaker-dependent' if speaker_dependent else 'speaker-independent'}), encoder "
            f"{base['encoder'].get('id') if isinstance(base['encoder'], dict) else base['encoder']}. "
            "Mean ± std over folds, %. Speaker EER: cosine scoring of X_s over all test-utterance pairs "
            "(lower = more speaker information); EER of X_e: the same on the emotion features (higher = better "
            "decoupled).\n\n")




def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("--out", required=True, help="output folder (one subfolder per row)")
    p.add_argument("--extractors", help=f"comma list from {','.join(EXTRACTORS)} (default all)")
    p.add_argument("--variants", help=f"comma list from {','.join(VARIANTS)} (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    p.add_argument("--table-only", action="store_true", help="run nothing; tabulate the finished rows")


def _main(args) -> int:
    from serkit.run_lock import folder_lock
    from serkit.train.cli import parse_folds

    folds = parse_folds(args.folds)
    with folder_lock(args.out):  # one writer per run folder
        md, _ = run_ablation(args.config, args.out, split_list(args.extractors, EXTRACTORS),
                             split_list(args.variants, VARIANTS), args.set, folds, table_only=args.table_only)
    print(md)
    print(f"table -> {args.out}/table.md, {args.out}/table.csv")
    return 0


def add_parsers(sub) -> None:
    """``serkit ablate-hcld`` (the CLI wires this in)."""
    p = sub.add_parser("ablate-hcld", help="HCLD Table II: extractor x variant cross-validations + table")
    _add_arguments(p)
    p.set_defaults(func=_main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serkit.recipes.hcld_ablation", description=__doc__.split("\n")[0])
    _add_arguments(p)
    return _main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
