"""The model card of a model folder (``README.md``, the Hugging Face hub's format) and ``serkit info``.

:func:`describe_model` gathers what a user must know from the folder's files (corpus, classes, protocol,
validation and cross-validation figures, normalisation, encoder, precision); :func:`write_model_card` renders it.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from serkit.config_defaults import UNRECORDED_PRECISION, with_defaults
from serkit.io import atomic_write_text


def _read(d: Path, name: str):
    p = d / name
    if not p.exists():
        return {}
    return yaml.safe_load(p.read_text()) if name.endswith(".yaml") else json.loads(p.read_text())


def describe_model(model_dir: str | Path) -> dict:
    """Facts of a model folder as a dict (every key present; None where the folder does not say)."""
    from serkit.version import __version__

    d = Path(model_dir)
    cfg, meta, val = _read(d, "config.yaml"), _read(d, "meta.json"), _read(d, "validation.json")
    labels, enc = _read(d, "labels.json"), _read(d, "encoder.json")
    heads = meta.get("heads") or {("speaker" if cfg.get("features", {}).get("normalize") == "speaker"
                                   else "global"): "model.safetensors"}
    # a folder written before precisions were recorded: its encoder.json may still name the features' precision
    precision = meta.get("precision") or {**UNRECORDED_PRECISION,
                                          "features": enc.get("precision", UNRECORDED_PRECISION["features"])}
    return {
        "name": cfg.get("name"), "folder": str(d), "serkit_version": meta.get("serkit_version", __version__),
        "corpus": cfg.get("corpus") or cfg.get("manifest"), "class_set": cfg.get("class_set"),
        "task": labels.get("task"), "classes": labels.get("classes") or [], "targets": labels.get("targets") or [],
        "class_counts": meta.get("class_counts") or {}, "n_train": meta.get("n_train"),
        "n_speakers": meta.get("n_speakers"), "train_hours": meta.get("train_hours"),
        "refit": meta.get("refit"), "heads": heads, "recipe": cfg.get("recipe"), "model": cfg.get("model"),
        "encoder": enc.get("encoder"), "encoder_revision": enc.get("revision"), "encoder_mode": enc.get("mode"),
        "layers": enc.get("layers"), "feature_level": (cfg.get("features") or {}).get("level"),
        "normalize": with_defaults(cfg)["features"]["normalize"] or "none", "precision": precision,
        "window_seconds": (cfg.get("predict") or {}).get("window_seconds"),
        "hop_seconds": (cfg.get("predict") or {}).get("hop_seconds"),
        "validation": val.get("heads") or {}, "validation_protocol": val.get("protocol"), "cv": val.get("cv"),
        "train_wall_seconds": meta.get("train_wall_seconds"),
        "views": enc.get("views") or {},
        "ensembles": {h: e["ensemble"] for h, e in (meta.get("head_extra") or {}).items() if "ensemble" in e},
    }


def _head_text(model: dict | None) -> str:
    model = dict(model or {})
    name = model.pop("name", "?")
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in model.items()) + ")"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}"


def _cv_lines(cv: dict | None, task: str | None) -> list[str]:
    if not cv:
        return ["No cross-validation was attached (`serkit train --cv-results RUN/results.json` quotes one).", ""]
    keys = ["ua", "wa", "macro_f1"] if task == "classification" else [k for k in cv["mean"] if k.startswith("ccc")]
    lines = [(f"Cross-validation with the same settings (`serkit cv`, {cv.get('n_folds')} folds, protocol "
             f"`{cv.get('protocol')}`, speaker-independent: {cv.get('speaker_independent')}):"), "",
             "| metric | mean ± std |", "|---|---|"]
    for k in keys:
        if k in cv.get("mean", {}):
            lines.append(f"| {k} | {cv['mean'][k]:.3f} ± {cv['std'].get(k, float('nan')):.3f} |")
    if cv.get("feature_normalisation", "none") != "none":
        lines += ["", f"Feature normalisation in those folds: {cv['feature_normalisation']}."]
    return [*lines, ""]


def _corpus_names(corpus) -> list[str]:
    """The named corpora a model was trained on (a table or folder of one's own data names none)."""
    names = corpus if isinstance(corpus, list) else [corpus] if corpus else []
    return [str(n) for n in names if str(n) not in ("csv", "folder") and "/" not in str(n)]


def hub_metadata(info: dict, base_model) -> dict:
    """The card's YAML header, in the Hugging Face hub's model-card fields: licence and languages from the corpora
    (``other`` unless every corpus has the same open licence), the corpora as datasets, the metrics the card
    quotes, the task and the library."""
    from serkit.corpora import available, get_reader

    corpora = _corpus_names(info.get("corpus"))
    readers = [get_reader(c) for c in corpora if c in available()]
    licences = {r.LICENSE for r in readers}
    languages = sorted({r.LANGUAGE for r in readers if r.LANGUAGE})
    front = {"library_name": "serkit",
             "license": licences.pop() if len(licences) == 1 and None not in licences and readers else "other"}
    if languages:
        front["language"] = languages
    if corpora:
        front["datasets"] = corpora
    front["metrics"] = (["recall", "accuracy", "f1"] if info.get("task") == "classification"
                        else ["concordance_correlation_coefficient"])
    front["tags"] = ["speech-emotion-recognition", "audio-classification", "serkit"]
    front["pipeline_tag"] = "audio-classification"
    front["base_model"] = base_model
    return front


def render_model_card(info: dict) -> str:
    """The card's Markdown (with hub metadata in a YAML header)."""
    views = info.get("views") or {}
    base = sorted({v["encoder"] for v in views.values()}) if views else info["encoder"]
    front = hub_metadata(info, base)
    task = info["task"]
    what = (f"{len(info['classes'])} classes: " + ", ".join(info["classes"])) if task == "classification" else \
        "attributes: " + ", ".join(info["targets"])
    counts = ", ".join(f"{k} {v}" for k, v in info["class_counts"].items())
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {info['name']}: speech emotion recognition (serkit)", "",
             (f"A `{info['recipe']}` head on frozen `{info['encoder']}` features ({what}), trained with serkit "
             f"{info['serkit_version']}."), "", "## Training data", "",
             f"- corpus: `{info['corpus']}`" + (f", class set `{info['class_set']}`" if info["class_set"] else ""),
             f"- {info['n_train']} utterances of {info['n_speakers']} speakers ({info['train_hours']} h)"
             + (f"; per class: {counts}" if counts else ""),
             f"- protocol: {info['validation_protocol']}", "", "## Validation", ""]
    for head, v in info["validation"].items():
        if v.get("steps"):
            lines.append(_steps_line(head, v))
            continue
        if v.get("best_val") is None:
            continue
        lines.append(f"- {head} head: best validation {v['monitor']} {_pct(v['best_val'])}% at epoch "
                     f"{v['best_epoch']} on {v['n_val']} utterances of held-out speakers {', '.join(v['val_speakers'])}"
                     + (f"; then refit on all speakers for {v['refit_epochs']} epochs" if v.get("refit") else ""))
    lines += ["", "These validation figures chose the epoch count; they are optimistic as test figures.", ""]
    lines += _cv_lines(info["cv"], task)
    norm = info["normalize"]
    lines += ["## What a user must supply", "",
              "- audio: any format libsndfile reads, any sample rate (resampled to 16 kHz), mono or averaged to mono",
              (f"- clips are scored in windows of {info['window_seconds']} s (hop {info['hop_seconds']} s); long "
              "recordings: `serkit predict MODEL long.flac --segments` (silero-vad, per-segment emotion)")]
    if norm == "speaker":
        lines += [("- normalisation: features z-scored per speaker. With at least 10 s of the speaker's (emotionally "
                  "varied) speech, `--enroll FILES` or `--same-speaker` uses the speaker-normalised head; a single "
                  "clip of an unknown speaker is answered by the global head (trained on the same data without "
                  "speaker normalisation; usually less accurate). Each result says which head answered (`head`).")]
    else:
        lines += ["- normalisation: none (global features); nothing about the speaker is needed"]
    lines += ["", "## Model", ""]
    if views:
        lines += [f"- views (frozen encoders, {len(views)}): " + "; ".join(
            f"`{n}` = `{v['encoder']}` (revision `{v.get('revision')}`, mode `{v.get('mode')}`, hidden states "
            f"{v.get('layers')})" for n, v in views.items())]
        lines += _ensemble_lines(info.get("ensembles") or {})
    else:
        lines += [(f"- encoder: `{info['encoder']}` (revision `{info['encoder_revision']}`, mode "
                   f"`{info['encoder_mode']}`, hidden states {info['layers']}), frozen; feature level "
                   f"`{info['feature_level']}`")]
    lines += [
              f"- head: `{_head_text(info['model'])}`; heads in this folder: "
              + ", ".join(f"{h} (`{f}`)" for h, f in info["heads"].items()),
              (f"- precision: features extracted in `{info['precision']['features']}`, head trained in "
              f"`{info['precision']['train']}`; prediction runs the encoder in the features' precision "
              "(`--precision` to change)"),
              "", "## Use", "",
              (f"`MODEL` is this folder (e.g. `./{Path(info['folder']).name}`) or, once uploaded, its hub id "
               f"`OWNER/{Path(info['folder']).name}`:"), "",
              "```bash", "serkit predict MODEL clip.wav", "```", "",
              "```python", "from serkit import Recognizer", "",
              'rec = Recognizer.from_pretrained("MODEL")', "rec.predict(\"clip.wav\")", "```", "",
              "## Intended use and limits", "",
              (f"- Research on emotional speech similar to `{info['corpus']}` (acted, read or studio speech if the "
              "corpus is). Expect much lower accuracy on other languages, spontaneous speech, noise, children or "
              "channels unlike the corpus; validate on your own data first."),
              ("- The labels are the corpus's categories, not a person's inner state; do not use them for decisions "
              "about people (hiring, policing, health, credit) or without the speaker's consent."),
              "- Licence: the weights derive from the corpus and the encoder; their terms apply to this model.", ""]
    return "\n".join(lines)


def _steps_line(head: str, v: dict) -> str:
    """The validation line of a stage list ending in a step (IF-MVSE's combination)."""
    epochs = ", ".join(f"{n} {e}" for n, e in (v.get("stage_epochs") or {}).items())
    parts = [f"{name}: {k.replace('_', ' ')} {_pct(x) if isinstance(x, float) else x}"
             for name, step in v["steps"].items() for k, x in step.items() if k == "search_val"]
    return (f"- {head} head: {'; '.join(parts) or 'steps ' + ', '.join(v['steps'])} on {v['n_val']} utterances of "
            f"held-out speakers {', '.join(v['val_speakers'])} (the same outputs chose the weights); best "
            f"validation epoch per stage: {epochs}")


def _ensemble_lines(ensembles: dict) -> list[str]:
    """Card lines of IF-MVSE heads: each view's input, the score sets and the weights chosen on validation."""
    lines = []
    for head, e in ensembles.items():
        sets = ", ".join(f"{s['name']} ({' + '.join(s['views'])}) x {w:g}"
                         for s, w in zip(e["score_sets"], e["weights"], strict=True))
        inputs = "; ".join(f"`{v['name']}`: layers {'all' if v.get('layers') is None else v['layers']}, "
                           f"{v['pooling']} pooling, normalisation {v['normalize']}, width {v['width']}"
                           for v in e["views"])
        what = "class probabilities" if e.get("class_scores") == "probs" else "scores"
        lines += [f"- {head} head: score sets combined as sum of weight x {what}: {sets}",
                  f"  - view inputs (z-scored with the training speakers' statistics): {inputs}"]
    if ensembles:
        lines.append("- the score sets (each with its best validation epoch) and the weights (searched on the "
                     "validation speakers' outputs) come from the validation-split run; nothing is refit on all "
                     "speakers")
    return lines


def write_model_card(model_dir: str | Path) -> Path:
    """(Re)write ``MODEL/README.md`` from the folder's files."""
    info = describe_model(model_dir)
    return atomic_write_text(Path(model_dir) / "README.md", render_model_card(info))


def format_info(info: dict) -> str:
    """``serkit info``: the facts of a model folder in a few lines."""
    what = ", ".join(info["classes"]) if info["task"] == "classification" else ", ".join(info["targets"])
    lines = [f"{info['name']} ({info['folder']})",
             f"  task:      {info['task']}: {what}",
             f"  corpus:    {info['corpus']}; {info['n_train']} utterances, {info['n_speakers']} speakers"
             + ("; refit on all speakers" if info["refit"] else ""),
             (f"  encoder:   {info['encoder']} ({info['encoder_mode']}, layers {info['layers']}), "
             f"features {info['feature_level']}, normalisation {info['normalize']}") if not info.get("views") else
             ("  views:     " + ", ".join(f"{n} = {v['encoder']}" for n, v in info["views"].items())
              + f", normalisation {info['normalize']}"),
             f"  heads:     {', '.join(info['heads'])}",
             f"  windows:   {info['window_seconds']} s, hop {info['hop_seconds']} s",
             f"  precision: features {info['precision']['features']}, training {info['precision']['train']}"]
    for head, v in info["validation"].items():
        if v.get("steps"):
            lines.append("  " + _steps_line(head, v)[2:])
        elif v.get("best_val") is not None:
            lines.append(f"  validation ({head} head): {v['monitor']} {_pct(v['best_val'])}% at epoch {v['best_epoch']}"
                         + (f", refit {v['refit_epochs']} epochs" if v.get("refit") else ""))
    for head, e in (info.get("ensembles") or {}).items():
        lines.append(f"  weights ({head} head): "
                     + ", ".join(f"{s['name']} {w:g}" for s, w in zip(e["score_sets"], e["weights"], strict=True)))
    cv = info["cv"]
    if cv:
        key = "ua" if info["task"] == "classification" else "ccc_mean"
        if key in cv.get("mean", {}):
            lines.append(f"  cv:        {key} {cv['mean'][key]:.3f} ± {cv['std'][key]:.3f} ({cv.get('n_folds')} folds)")
    return "\n".join(lines)
