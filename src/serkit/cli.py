"""The ``serkit`` command. Each sub-command lives with the code it drives; this module only wires them."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path


def _prepare(args) -> int:
    from serkit.corpora import apply_class_set, prepare
    from serkit.manifest import class_distribution, write_manifest

    df = prepare(args.corpus, args.root)
    if args.class_set:
        df = apply_class_set(df, args.class_set, corpus=args.corpus)
    out = write_manifest(df, args.out)
    print(f"{args.corpus}: {len(df)} utterances, {df['speaker'].nunique()} speakers -> {out}")
    print("  emotion: " + ", ".join(f"{k} {v}" for k, v in class_distribution(df).items()))
    print("  gender:  " + ", ".join(f"{k} {v}" for k, v in class_distribution(df, "gender").items()))
    for dim in ("arousal", "valence", "dominance"):
        if dim in df.columns:
            print(f"  {dim}: mean {df[dim].mean():.3f} std {df[dim].std():.3f} "
                  f"range [{df[dim].min():.3f}, {df[dim].max():.3f}]")
    return 0


def _check(args) -> int:
    from serkit.check import CheckConfig, check_manifest, fatal, summarise
    from serkit.io import atomic_write_text
    from serkit.manifest import read_manifest

    rc = 0
    for manifest in args.manifest:
        df = read_manifest(manifest)
        report = check_manifest(df, CheckConfig(min_seconds=args.min_seconds, max_seconds=args.max_seconds))
        print(f"== {manifest}")
        print(summarise(report))
        if args.report:
            out = Path(args.report) if len(args.manifest) == 1 else Path(args.report).with_name(
                f"{Path(manifest).stem}_{Path(args.report).name}")
            atomic_write_text(out, report.to_csv(index=False))
            print(f"  report -> {out}")
        if args.strict and any(fatal(p) for p in report["problems"]):
            rc = 1
    return rc


def _folds(args) -> int:
    from serkit.config import parse_yaml
    from serkit.corpora import get_reader
    from serkit.errors import ConfigError
    from serkit.manifest import read_manifest
    from serkit.protocols import make_folds, save_folds, summary_text

    df = read_manifest(args.manifest)
    if args.protocol:
        protocol = parse_yaml(args.protocol, "--protocol")
        if isinstance(protocol, str):
            protocol = {"name": protocol}
        if not isinstance(protocol, dict):
            raise ConfigError(f"--protocol: expected a name or a mapping such as '{{name: speaker_kfold, k: 6}}', "
                              f"got {args.protocol!r}")
    else:
        protocol = dict(get_reader(str(df["corpus"].iloc[0])).default_protocol)
    folds = make_folds(df, protocol, seed=args.seed)
    print(summary_text(folds, df, protocol))
    if args.out:
        print(f"-> {save_folds(folds, args.out)}")
    return 0


def _config(args) -> int:
    """Print the resolved config: defaults filled, ``extends`` and ``--set`` applied, checked (what a run saves
    as ``config.yaml``)."""
    from serkit.config import dump, load_config

    sys.stdout.write(dump(load_config(args.config, args.set)))
    return 0


#: command -> (module that registers it, one-line help)
LAZY_COMMANDS = {
    "extract": ("serkit.features.cli", "extract encoder features of a manifest into a feature store"),
    "cv": ("serkit.train.cli", "cross-validate a config over its protocol's folds (resumable)"),
    "train": ("serkit.train.cli", "train one model on all speakers (epoch count validated on held-out speakers)"),
    "predict": ("serkit.train.cli", "predict emotions of audio files with a trained model"),
    "export": ("serkit.export", "export a trained model (encoder + feature stage + head) to ONNX"),
    "serve": ("serkit.service", "REST API and web page for a trained model (FastAPI + uvicorn)"),
    "info": ("serkit.train.cli", "what a model folder holds: corpus, classes, heads, validation, encoder"),
    "ablate": ("serkit.ablation.run", "ablation rows and paper tables of a config's recipe (configs/ablations/)"),
    "results": ("serkit.results_page", "results pages that regenerate: summaries of run folders, docs/results.md"),
}


def _corpus_sources() -> str:
    """``serkit prepare --help``'s list of corpora and where each comes from."""
    from serkit.corpora import available, get_reader

    lines = [f"  {name:12} {get_reader(name).SOURCE}" for name in available()]
    return "corpora and where to get them (serkit reads each from its download layout):\n" + "\n".join(lines)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``serkit`` parser; ``command`` (the first argument) selects which heavy sub-command to import."""
    from serkit.version import __version__

    parser = argparse.ArgumentParser(prog="serkit", description="Speech emotion recognition toolkit")
    parser.add_argument("--version", action="version", version=f"serkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read a corpus into a manifest (CSV or Parquet by suffix)",
                       epilog=_corpus_sources() if command == "prepare" else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus",
                   help="ravdess, emodb, tava, iemocap, msp-podcast, msp-improv, savee, crema-d, tess, csv, folder")
    p.add_argument("--root", help="corpus folder (csv: the table); default $SERKIT_DATA/corpora/<corpus>")
    p.add_argument("--out", required=True, help="manifest file (.csv or .parquet)")
    p.add_argument("--class-set", help="named class set of the corpus (e.g. 4class) to map / drop classes")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("check", help="report bad audio files of manifests by name (never stops half-way)")
    p.add_argument("manifest", nargs="+")
    p.add_argument("--report", help="write the per-file report as CSV")
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--strict", action="store_true", help="exit 1 when a file is unusable")
    p.set_defaults(func=_check)

    p = sub.add_parser("folds", help="build, show and save the folds of a protocol")
    p.add_argument("manifest")
    p.add_argument("--protocol", help="YAML/JSON, e.g. '{name: speaker_kfold, k: 6}'; default: the corpus's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folds JSON")
    p.set_defaults(func=_folds)

    p = sub.add_parser("config", help="print a config resolved: defaults, extends and --set applied, checked")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=_config)

    # Heavy sub-commands (torch, transformers, Lightning) are imported only when they are the command being run;
    # otherwise a light stub keeps them listed in --help. One table names each command's module.
    wanted = command if command in LAZY_COMMANDS else None
    if wanted is not None:
        mod = importlib.import_module(LAZY_COMMANDS[wanted][0])
        for fn in ("add_parsers", "add_extract_parser"):
            if hasattr(mod, fn):
                getattr(mod, fn)(sub)
    registered = set(sub.choices)
    for name, (_, help_text) in LAZY_COMMANDS.items():
        if name not in registered:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``serkit`` command; returns the exit status. A closed stdout (``serkit info --json | head -1``) ends it
    quietly, as it does other command-line tools."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here at the latest, not at interpreter exit
    except BrokenPipeError:
        try:  # nothing more can reach the reader: send the rest (and the flush at exit) nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # 128 + SIGPIPE, the status of a shell tool that a closed pipe ended


def _quiet_third_party() -> None:
    """Warnings of other libraries that say nothing to a serkit user: torch's ONNX exporter names every torchvision
    operator it skips when torchvision is not installed."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def _main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    argv = sys.argv[1:] if argv is None else list(argv)
    from serkit.errors import SerkitError, missing_extra

    try:
        parser = build_parser(argv[0] if argv else None)
    except ImportError as exc:  # the command's module needs an extra that is not installed
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"serkit {argv[0]}: error: {message}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)

    try:
        return int(args.func(args) or 0)
    except SerkitError as exc:
        print(f"serkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency of this command: one line naming the extra to install
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"serkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # a reader that went away: main() ends quietly
    except OSError as exc:  # a read-only, full or forbidden place to write: one line naming the path
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"serkit {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
