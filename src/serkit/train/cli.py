"""``serkit cv``, ``serkit train`` and ``serkit predict`` sub-commands."""

from __future__ import annotations

import json
import sys


def _precision_overrides(args) -> list[str]:
    """``--precision P``: ``encoder.precision=P`` and ``train.precision=P`` after the ``--set`` overrides."""
    if args.precision is None:
        return list(args.set)
    return [*args.set, f"encoder.precision={args.precision}", f"train.precision={args.precision}"]


def _cv(args) -> int:
    from serkit.train.cv import format_table, run_cv

    folds = [int(x) for x in args.folds.split(",")] if args.folds else None
    summary = run_cv(args.config, args.out, _precision_overrides(args), folds_only=folds)
    print(format_table(summary))
    print(f"results -> {args.out}/results.json, report -> {args.out}/report.md")
    return 0


def _train(args) -> int:
    from serkit.train.final import train_final

    path = train_final(args.config, args.out, _precision_overrides(args))
    print(f"model -> {path}")
    return 0


def _predict(args) -> int:
    from serkit.inference import Recognizer

    rec = Recognizer.from_pretrained(args.model, precision=args.precision)
    # one bad file is reported in its row, never the end of the list; speaker-normalised models take the files
    # (or --enroll) as one speaker
    if rec.normalize != "none" and not args.enroll:
        print(f"note: this model normalises features per speaker; their statistics are estimated from the "
              f"{len(args.files)} given file(s) taken as one speaker. Give --enroll with several seconds of the "
              f"speaker's emotionally varied speech for reliable labels (statistics from one emotion only "
              f"cancel that emotion).", file=sys.stderr)
    results = rec.predict_files(args.files, enroll=args.enroll)
    if args.format == "json":
        json.dump(results, sys.stdout, indent=1, default=float)
        print()
    else:
        import pandas as pd

        rows = []
        for r in results:
            row = {"file": r["file"], "duration": r.get("duration"), "label": r.get("label")}
            row.update({f"p_{k}": v for k, v in r.get("probabilities", {}).items()})
            row.update(r.get("values", {}))
            row["windows"] = len(r.get("windows", []))
            row["precision"] = r.get("precision", rec.precision)
            row["error"] = r.get("error", "")
            rows.append(row)
        pd.DataFrame(rows).to_csv(sys.stdout, index=False)
    return 0


def _add_precision(p, what: str) -> None:
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help=f"{what} (auto: bf16 where the CPU has AMX / AVX512-bf16 or the GPU supports it)")


def add_parsers(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate a config over its protocol's folds (resumable)")
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    _add_precision(p, "sets encoder.precision and train.precision")
    p.set_defaults(func=_cv)

    p = sub.add_parser("train", help="train one model on the whole corpus (validation speakers carved out)")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="model folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _add_precision(p, "sets encoder.precision and train.precision")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="predict emotions of audio files with a trained model")
    p.add_argument("model", help="model folder from `serkit train`")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--enroll", nargs="+", metavar="FILE",
                   help="audio of the speaker, for models trained with features.normalize: speaker "
                        "(default: the files themselves, taken as one speaker)")
    _add_precision(p, "encoder precision (default: the one the model's features were extracted in)")
    p.set_defaults(func=_predict)
