"""The model that ships inside the package: what ``serkit predict clip.wav`` (no model argument),
``Recognizer.from_pretrained()`` and ``serkit serve`` use.

It is a model folder like any other (``config.yaml``, ``model.safetensors``, ``labels.json``, ``encoder.json``,
``meta.json``, ``README.md``): heads and fitted feature-stage state only, a few hundred KB; the encoder
(``openai/whisper-base``) comes from the Hugging Face cache or hub as for any model. It is built by
``scripts/build_default_model.sh`` (``serkit train configs/default/whisper-base-6class.yaml``, then
``python -m serkit.shipped_model pack MODEL DEST``), which keeps what prediction needs and drops local paths.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from serkit.errors import SerkitError

#: Where the shipped model lives inside the installed package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
#: Files a packed model keeps (the heads as meta.json names them are added).
#: the config whose cross-validation gives the card's figures: the shipped model's head, features and choices on the
#: six classes, within and across the two corpora
CARD_CV_CONFIG = "configs/cross/ravdess-emodb-single-clip.yaml"
PACKED_FILES = ("config.yaml", "labels.json", "encoder.json", "meta.json", "validation.json")
#: Terms of the corpora the shipped model was trained on (its weights follow the most restrictive).
LICENCE = ("Trained on RAVDESS (CC BY-NC-SA 4.0) and Berlin EmoDB (free for research): for non-commercial "
           "research use; share derived models alike (CC BY-NC-SA 4.0).")


def default_model_dir() -> Path:
    """The shipped model's folder; a :class:`SerkitError` when this installation has none."""
    if not (DEFAULT_MODEL_DIR / "meta.json").exists():
        raise SerkitError(f"this serkit has no default model ({DEFAULT_MODEL_DIR} is empty); give a model folder "
                          f"from `serkit train` or a hub id")
    return DEFAULT_MODEL_DIR


def pack(model_dir: str | Path, dest: str | Path, cv_results: str | Path | None = None) -> Path:
    """Copy what prediction needs from ``model_dir`` into ``dest`` (replaced), without local paths (``root``,
    ``cache_dir``, ``manifest``), and write its card with the figures of ``cv_results`` (a ``serkit cv``
    results.json of the cross-corpus single-clip config) when given."""
    src, dest = Path(model_dir), Path(dest)
    meta = json.loads((src / "meta.json").read_text())
    files = list(PACKED_FILES) + sorted(set((meta.get("heads") or {}).values()))
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    speeds = (cfg.get("features") or {}).get("speed_perturb") or []
    if (src / "validation.json").exists():  # what the validation speakers chose over the config's train.select grid
        heads = json.loads((src / "validation.json").read_text()).get("heads") or {}
        chosen = [(h.get("selection") or {}).get("chosen") or {} for h in heads.values()]
        speeds = next((c["features.speed_perturb"] for c in chosen if "features.speed_perturb" in c), speeds) or []
    level_db = (cfg.get("encoder") or {}).get("level_db")
    for name in files:
        if name == "config.yaml":
            cfg["root"], cfg["manifest"] = None, None
            cfg["features"]["cache_dir"] = None
            (tmp / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
        elif (src / name).exists():
            shutil.copyfile(src / name, tmp / name)
    (tmp / "README.md").write_text(card(meta, json.loads((src / "labels.json").read_text()),
                                        json.loads(Path(cv_results).read_text()) if cv_results else None, speeds,
                                        level_db))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def card(meta: dict, labels: dict, cv: dict | None, speeds: list | None = None, level_db: float | None = None
         ) -> str:
    """The shipped model's card: what it is, its figures (single-clip track) and its licence terms. ``speeds``:
    the speed factors of the copies it also trained on (``features.speed_perturb``); ``level_db``: the level every
    clip is scaled to before the encoder (``encoder.level_db``)."""
    classes = labels.get("classes") or []
    copies = (f", with copies of every training utterance at {' and '.join(f'{f:g}x' for f in speeds)} speed"
              if speeds else "")
    lines = ["---", "license: cc-by-nc-sa-4.0", "language: [en, de]", "datasets: [RAVDESS, EmoDB]",
             "metrics: [unweighted_accuracy]", "tags: [speech-emotion-recognition, serkit]", "---", "",
             "# serkit default model: whisper-base, six emotions", "",
             (f"Classes: {', '.join(classes)}. Trained on {meta.get('n_train')} utterances of "
              f"{meta.get('n_speakers')} speakers of RAVDESS (English, acted) and EmoDB (German, acted), on global "
              f"features of `openai/whisper-base` (mean and std of every hidden state){copies}: it needs no other "
              "recording of the speaker. "
              + (f"Every clip is first scaled to an active-speech level of {level_db:g} dBFS (its own samples only), "
                 "so the microphone's gain does not change the answer. " if level_db is not None else "")
              + "Probabilities are temperature-scaled on validation speakers; `--abstain` "
              "answers `unknown` below the confidence at which 90% of its validation answers were right."), "",
             "```bash", "serkit predict clip.wav            # this model, no training needed", "```", ""]
    table = cv.get("cross_corpus") if cv else None
    if isinstance(table, dict):
        metric = table.get("metric", "ua")
        lines += [f"## Figures (single-clip track: `serkit cv {CARD_CV_CONFIG}`)", "",
                  (f"The same head, features and choices on the six classes, {metric.upper()} on test speakers never "
                   "heard in training: within each corpus (speaker-independent folds) and trained on one corpus, "
                   "tested on the other (how far a model of this kind carries to new recording conditions; the shipped "
                   "model itself is trained on both corpora)."), "",
                  f"| trained on | tested on | {metric.upper()} |", "|---|---|---|"]
        for corpus, r in (table.get("in_corpus") or {}).items():
            lines.append(f"| {corpus} (speaker-independent folds) | {corpus} | {r[metric]:.3f} ± {r['std']:.3f} "
                         f"({r['folds']} folds) |")
        for row in table.get("rows") or []:
            train = ", ".join(row["train"]) if isinstance(row["train"], list) else str(row["train"])
            lines.append(f"| {train} | {row['test']} | {row[metric]:.3f} |")
        lines.append("")
    lines += ["## Limits", "",
              ("Acted speech of two corpora; expect lower accuracy on spontaneous speech, other languages and other "
               "recording conditions (the cross-corpus rows above are the honest guide)."), "",
              "## Licence", "", LICENCE, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serkit.shipped_model", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="copy a model folder into the package as the shipped model")
    p.add_argument("model")
    p.add_argument("dest")
    p.add_argument("--cv", help=f"results.json of `serkit cv {CARD_CV_CONFIG}`")
    args = ap.parse_args(argv)
    print(pack(args.model, args.dest, args.cv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
