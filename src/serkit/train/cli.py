"""``serkit cv``, ``serkit train`` and ``serkit predict`` sub-commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _precision_overrides(args) -> list[str]:
    """``--precision P``: ``encoder.precision=P`` and ``train.precision=P`` after the ``--set`` overrides;
    ``--root DIR``: ``root=DIR``."""
    root = [f"root={args.root}"] if getattr(args, "root", None) else []
    if args.precision is None:
        return [*args.set, *root]
    return [*args.set, *root, f"encoder.precision={args.precision}", f"train.precision={args.precision}"]


def experiment(args):
    """``args.config``: a YAML config, or data (a table, a prepared manifest, a folder) to build one from
    (serkit.train.defaults); returns what :func:`serkit.config.load_config` takes."""
    from serkit.errors import ConfigError
    from serkit.train.defaults import is_config, table_config

    if is_config(args.config):
        if args.recipe or args.layout or args.task:
            raise ConfigError("--recipe / --layout / --task apply to a table or folder, not to a config file "
                              f"({args.config}); change the config or use --set")
        return args.config
    if getattr(args, "root", None):
        raise ConfigError(f"--root names a config's corpus folder; {args.config} is data itself (give it alone)")
    return table_config(args.config, layout=args.layout, recipe=args.recipe, task=args.task or "classification")


def parse_folds(text: str | None) -> list[int] | None:
    """``--folds 0,2`` -> ``[0, 2]`` (None without the option); anything but non-negative integers is a one-line
    ConfigError (the protocol's fold count is checked by run_cv before any work)."""
    if text is None:
        return None
    from serkit.errors import ConfigError

    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--folds {text!r}: expected fold numbers (integers from 0) separated by commas, e.g. 0,1")
    return sorted({int(p) for p in parts})


def _default_out(args, cfg) -> str:
    if args.out:
        return args.out
    from pathlib import Path

    from serkit.config import load_config

    return str(Path("runs") / load_config(cfg, args.set)["name"])


def _cv(args) -> int:
    from serkit.run_lock import folder_lock
    from serkit.train.cv import format_table, run_cv

    folds = parse_folds(args.folds)
    cfg = experiment(args)
    out = _default_out(args, cfg)
    with folder_lock(out):  # one writer per run folder
        summary = run_cv(cfg, out, _precision_overrides(args), folds_only=folds)
    print(format_table(summary))
    print(f"results -> {out}/results.json, report -> {out}/report.md")
    return 0


def _train(args) -> int:
    """Train into ``.<name>.partial`` beside ``--out`` (a rerun after a kill resumes there), then put it in place in
    one step: readers of an existing model folder see the old model or the new one."""
    import shutil
    from pathlib import Path

    from serkit.errors import SerkitError
    from serkit.run_lock import model_lock_path, replace_folder, run_lock, secondary_rank
    from serkit.train.final import train_final

    cfg = experiment(args)
    out = Path(_default_out(args, cfg))
    with run_lock(model_lock_path(out), str(out)):
        if secondary_rank():  # a DDP rank re-run by Lightning: trains beside rank 0, which checks and swaps
            train_final(cfg, out.parent / f".{out.name}.partial", _precision_overrides(args),
                        refit=not args.no_refit, cv_results=args.cv_results)
            return 0
        if out.exists() and not out.is_dir():
            raise SerkitError(f"--out {out}: exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise SerkitError(f"--out {out}: the folder exists and is not empty; give --overwrite to replace it "
                              f"(done in one step once the new model is trained)")
        staging = out.parent / f".{out.name}.partial"
        if staging.is_symlink():
            staging.unlink()
        elif staging.exists() and not (staging / "work" / "config.yaml").exists():
            shutil.rmtree(staging)  # no run to resume there (a finished copy that was never swapped in): start anew
        train_final(cfg, staging, _precision_overrides(args), refit=not args.no_refit, cv_results=args.cv_results)
        replace_folder(staging, out)
    print(f"model -> {out}")
    return 0


def _add_data_options(p) -> None:
    p.add_argument("config", help="a YAML config, or data to build one from: a table (CSV: path, emotion[, speaker, "
                                  "gender, ...]; or a manifest from `serkit prepare`) or a folder per class")
    p.add_argument("--recipe", help="with a table: the recipe whose default settings to use (default baseline)")
    p.add_argument("--layout", choices=("csv", "folder"), help="with a table or folder: how to read it")
    p.add_argument("--task", choices=("classification", "regression"), help="with a table (default classification)")
    p.add_argument("--root", metavar="DIR", help="with a config: the corpus folder (same as --set root=DIR; default "
                                                 "$SERKIT_DATA/corpora/<corpus>)")


def split_model_argument(args: list[str]) -> tuple[str | None, list[str]]:
    """``(model, inputs)`` of ``serkit predict``'s positional arguments: the first is the model when it is a model
    folder (it holds meta.json or config.yaml) or reads as a hub id ``owner/name`` that is no path here and no audio
    file name; otherwise every argument is an input and the shipped model answers."""
    from serkit.inputs import AUDIO_SUFFIXES

    first = args[0]
    p = Path(first)
    if len(args) > 1 and ((p / "meta.json").is_file() or (p / "config.yaml").is_file() or (
            not p.exists() and first.count("/") == 1 and not first.startswith((".", "/", "~"))
            and p.suffix.lower() not in AUDIO_SUFFIXES and not any(c in first for c in "*?["))):
        return first, args[1:]
    return None, args


#: ``serkit predict --out`` suffix -> what is written
RESULT_FORMATS = {"csv": "one row per file (per segment with --segments)", "jsonl": "one result per line",
                  "json": "a list of results"}


def _check_predict_options(args) -> None:
    """What ``serkit predict`` can refuse before a model loads: an ``--out`` suffix it does not write, a
    ``--timeline`` without ``--segments`` or without matplotlib."""
    import importlib.util

    from serkit.errors import SerkitError, missing_extra

    if args.out and _suffix(args.out) not in RESULT_FORMATS:
        raise SerkitError(f"--out {args.out}: the file name must end in .csv, .jsonl or .json")
    if args.timeline and not args.segments:
        raise SerkitError(f"--timeline {args.timeline}: a timeline is drawn per recording's segments; add --segments")
    if args.timeline and importlib.util.find_spec("matplotlib") is None:
        raise SerkitError(f"--timeline draws figures: it {missing_extra(ModuleNotFoundError(name='matplotlib'))}")


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in Path(name).name else ""


def _predict(args) -> int:
    _check_predict_options(args)
    from serkit.inference import Recognizer
    from serkit.inputs import expand_inputs

    args.model, args.inputs = split_model_argument(args.inputs)

    rec = Recognizer.from_pretrained(args.model, device=args.device, batch_size=args.batch_size,
                                     revision=args.revision, precision=args.precision, backend=args.backend)
    inputs = expand_inputs(args.inputs)
    progress = False if args.no_progress else None
    results: list[dict] = [{"file": arg, "error": msg} for arg, msg in inputs.problems]
    if args.segments:
        from serkit.errors import SerkitError

        files = inputs.files + [p for _, m in inputs.manifests for p in m["path"]]
        for f in _progress(files, progress):
            try:
                r = rec.predict_segments(f, enroll=args.enroll, same_speaker=args.same_speaker,
                                         merge_gap=args.merge_gap)
            except SerkitError as exc:
                r = {"file": f, "error": str(exc)}
            if args.timeline and "error" not in r:
                from serkit.timeline import write_timeline

                write_timeline(r, rec.labels.classes, args.timeline)
            results.append(r)
    else:
        if rec.normalize != "none" and not (args.enroll or args.same_speaker):
            print("note: speaker-normalised model: the global head answers (give --enroll FILES or --same-speaker "
                  "with at least 10 s of one speaker's speech for the speaker-normalised head)", file=sys.stderr)
        if inputs.files:
            results += rec.predict_files(inputs.files, enroll=args.enroll, same_speaker=args.same_speaker,
                                         progress=progress, abstain=args.abstain)
        for _, table in inputs.manifests:
            results += rec.manifest_results(table, progress=progress, abstain=args.abstain)
    _write_results(results, args, segments=args.segments)
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"serkit predict: {len(failed)} of {len(results)} input(s) failed:", file=sys.stderr)
        for r in failed:
            err = r["error"]
            print(f"  {err}" if err.startswith(f"{r['file']}: ") else f"  {r['file']}: {err}", file=sys.stderr)
        return 1
    return 0


def _progress(items, progress):
    if progress is False or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, unit="file", file=sys.stderr, disable=None)


def _rows(results: list[dict], segments: bool) -> list[dict]:
    rows = []
    for r in results:
        base = {k: r[k] for k in ("id",) if k in r} | {"file": r["file"]}
        if segments and "error" not in r and r.get("segments"):
            for s in r["segments"]:
                row = {**base, "start": s["start"], "end": s["end"], "label": s.get("label"), "head": r["head"]}
                row.update({f"p_{k}": v for k, v in s.get("probabilities", {}).items()})
                row.update(s.get("values", {}))
                rows.append(row)
            continue
        row = {**base, "duration": r.get("duration"), "label": r.get("label"), "head": r.get("head"),
               "precision": r.get("precision")}
        row.update({f"p_{k}": v for k, v in r.get("probabilities", {}).items()})
        row.update(r.get("values", {}))
        if not segments:
            row["windows"] = len(r.get("windows", []))
        if r.get("note"):
            row["note"] = r["note"]
        row["error"] = r.get("error", "")
        rows.append(row)
    return rows


def _table(results: list[dict], segments: bool):
    import pandas as pd

    df = pd.DataFrame(_rows(results, segments))
    tail = [c for c in ("windows", "note", "error") if c in df.columns]
    return df[[c for c in df.columns if c not in tail] + tail]


def _write_results(results: list[dict], args, segments: bool) -> None:
    """``--out FILE`` (.csv: one row per file, or per segment with --segments; .jsonl: one result per line;
    .json: a list), else stdout in ``--format``."""

    from serkit.errors import SerkitError
    from serkit.io import atomic_write_text

    if args.out:
        suffix = _suffix(args.out)
        if suffix == "csv":
            text = _table(results, segments).to_csv(index=False)
        elif suffix == "jsonl":
            text = "".join(json.dumps(r, default=float) + "\n" for r in results)
        elif suffix == "json":
            text = json.dumps(results, indent=1, default=float) + "\n"
        else:
            raise SerkitError(f"--out {args.out}: the file name must end in .csv, .jsonl or .json")
        atomic_write_text(args.out, text)
        print(f"{len(results)} result(s) -> {args.out}")
    elif args.format == "json":
        json.dump(results, sys.stdout, indent=1, default=float)
        print()
    else:
        _table(results, segments).to_csv(sys.stdout, index=False)


def _info(args) -> int:
    from serkit.model_card import describe_model, format_info
    from serkit.model_folder import resolve_model_dir

    d = resolve_model_dir(args.model)
    info = describe_model(d)
    if args.json:
        json.dump(info, sys.stdout, indent=1, default=str)
        print()
    else:
        print(format_info(info))
    return 0


def _add_precision(p, what: str) -> None:
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help=f"{what} (auto: bf16 where the CPU has AMX / AVX512-bf16 or the GPU supports it)")


def add_parsers(sub) -> None:
    p = sub.add_parser("cv", help="cross-validate a config (or a table) over its protocol's folds (resumable)")
    _add_data_options(p)
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--folds", help="only these folds, e.g. 0,1")
    _add_precision(p, "sets encoder.precision and train.precision")
    p.set_defaults(func=_cv)

    p = sub.add_parser("train", help="train one model on all speakers (epoch count validated on held-out speakers)")
    _add_data_options(p)
    p.add_argument("--out", help="model folder (default runs/<name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the validation run's best model (trained without the validation speakers)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (in one step, once the new model is trained)")
    p.add_argument("--cv-results", metavar="RESULTS_JSON",
                   help="results.json of `serkit cv` with this config: the model card quotes its mean ± std")
    _add_precision(p, "sets encoder.precision and train.precision")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="predict emotions of audio files with a trained model")
    p.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                   help="a model folder from `serkit train` or a hub id owner/name (default: the model that ships "
                        "with serkit), then audio files, folders (searched recursively), glob patterns "
                        "('calls/**/*.wav'), manifests (.csv/.parquet with a path column)")
    p.add_argument("--out", help="write results to FILE: .csv, .jsonl or .json (default: stdout in --format)")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="stdout format without --out")
    p.add_argument("--enroll", nargs="+", metavar="FILE",
                   help="audio of the speaker (at least 10 s), for the speaker-normalised head of a model trained "
                        "with features.normalize: speaker")
    p.add_argument("--same-speaker", action="store_true",
                   help="the inputs are one speaker's: their own audio (at least 10 s) enrols the speaker")
    p.add_argument("--abstain", action="store_true",
                   help="label 'unknown' where the top probability is below the threshold the model chose on its "
                        "validation speakers (the confidence at which 90%% of its answers there were right)")
    p.add_argument("--segments", action="store_true",
                   help="long recordings: speech segments by voice activity detection, an emotion per segment")
    p.add_argument("--timeline", metavar="DIR", help="with --segments: write <name>.segments.csv and "
                                                      "<name>.timeline.png per file into DIR")
    p.add_argument("--merge-gap", type=float, default=1.0,
                   help="with --segments: merge neighbouring segments of one label at most this many s apart")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int, default=16, help="windows per encoder and head batch")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: the graph of `serkit export MODEL --format onnx`, run by onnxruntime (float32)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of a hub model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: on a terminal)")
    _add_precision(p, "encoder precision (default: the one the model's features were extracted in)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("info", help="what a model folder holds: corpus, classes, heads, validation, encoder")
    p.add_argument("model", help="model folder or hub id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)
