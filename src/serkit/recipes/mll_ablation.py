"""MLL ablation (the shape of Table 3 of the MLL paper): mixup none/LAM/EAM x pooling mean/max/FLAM x loss sets.

Every row is a full cross-validation (:func:`serkit.train.cv.run_cv`) of the base config with overrides, in its own
subfolder ``OUT/<row>/`` (so an interrupted ablation resumes row by row and fold by fold). The rows are collected
into ONE table, ``OUT/ablation.md`` and ``OUT/ablation.csv`` (mean ± std over folds of WA and UA, in %), with the
augmentation mode (``variants`` = K pre-mixed variants in the feature cache; ``on_the_fly`` = mixing in the loop)
written next to every number. ``--tsne`` adds t-SNE plots of test-utterance embeddings before (pooled encoder
features) and after (the model's embedding ``f``) for chosen rows, like the paper's Figure 2.

    serkit ablate-mll configs/ravdess/mll.yaml --out /work/runs/mll-ablation \
        [--rows none-flam-kc,eam-flam-all | --rows steps] [--set train.epochs=20] [--tsne eam-flam-all]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError
from serkit.io import atomic_write_text

#: loss sets: short name -> objective term names (weights and options come from the base config)
LOSS_SETS = {
    "k": ("kl",),  # KL on one-hot labels = cross-entropy: the "method off" loss
    "kc": ("kl", "center"),
    "kcf": ("kl", "center", "focal"),
    "kcs": ("kl", "center", "frame_supcon"),
    "all": ("kl", "focal", "center", "frame_supcon"),
}
LOSS_LABELS = {"k": "KL", "kc": "KL+Center", "kcf": "KL+Center+Focal", "kcs": "KL+Center+SupCon",
               "all": "KL+Focal+Center+SupCon"}
POOL_LABELS = {"mean": "MeanPool", "max": "MaxPool", "flam": "FLAM"}
MIX_LABELS = {"none": "none", "lam": "LAM", "eam": "EAM"}

#: the rows, in the order of the paper's Table 3 (mixup, pooling, loss set); names ``<mixup>-<pooling>-<losses>``
DEFAULT_ROWS = [
    ("lam", "flam", "kc"),
    ("none", "flam", "kc"),
    ("eam", "mean", "kc"),
    ("eam", "max", "kc"),
    ("eam", "flam", "kc"),
    ("eam", "flam", "kcf"),
    ("eam", "flam", "kcs"),
    ("eam", "flam", "all"),
    ("none", "mean", "kc"),
    ("none", "max", "kc"),
    ("none", "flam", "all"),
    ("lam", "mean", "kc"),
    ("lam", "max", "kc"),
]


#: the method off (no mixup, mean pooling, KL = CE only), then its parts added one at a time: EAM, FLAM, center
#: loss, focal loss, frame-level SupCon (``--rows steps``)
STEP_ROWS = [
    ("none", "mean", "k"),
    ("eam", "mean", "k"),
    ("eam", "flam", "k"),
    ("eam", "flam", "kc"),
    ("eam", "flam", "kcf"),
    ("eam", "flam", "all"),
]


def row_name(mix: str, pool: str, losses: str) -> str:
    return f"{mix}-{pool}-{losses}"


def parse_row(name: str) -> tuple[str, str, str]:
    parts = name.split("-")
    if len(parts) != 3 or parts[0] not in MIX_LABELS or parts[1] not in POOL_LABELS or parts[2] not in LOSS_SETS:
        raise ConfigError(f"--rows: {name!r} is not <{'|'.join(MIX_LABELS)}>-<{'|'.join(POOL_LABELS)}>-"
                         f"<{'|'.join(LOSS_SETS)}>")
    return parts[0], parts[1], parts[2]


def row_overrides(base_cfg: dict, mix: str, pool: str, losses: str) -> list[str]:
    """``--set`` assignments that turn the base config into one ablation row."""
    terms = {t.get("key", t["name"]): t for t in base_cfg["objective"]}
    wanted = LOSS_SETS[losses]
    missing = [n for n in wanted if n not in terms]
    if missing:
        raise ConfigError(f"the base config's objective lacks {missing}; it needs terms {LOSS_SETS['all']}")
    objective = [terms[n] for n in wanted]
    return [f"augment.name={mix}", f"model.pooling={pool}", "objective=" + json.dumps(objective)]


def collect(out: Path, rows: list[tuple[str, str, str]], base_cfg: dict) -> pd.DataFrame:
    from serkit.recipes.mll import augment_options

    recs = []
    for mix, pool, losses in rows:
        name = row_name(mix, pool, losses)
        res_path = out / name / "results.json"
        rec = {"row": name, "encoder": base_cfg["encoder"]["id"], "mixup": MIX_LABELS[mix],
               "mode": "-" if mix == "none" else augment_options(base_cfg)["mode"],
               "pooling": POOL_LABELS[pool], "losses": LOSS_LABELS[losses]}
        if res_path.exists():
            res = json.loads(res_path.read_text())
            m, s = res["mean"], res["std"]
            rec.update(folds=len(res["folds"]), wa_mean=100 * m["wa"], wa_std=100 * s["wa"], ua_mean=100 * m["ua"],
                       ua_std=100 * s["ua"], wall_seconds=res.get("wall_seconds"), epochs=base_cfg["train"]["epochs"],
                       fold_ids=" ".join(str(f["fold"]) for f in res["folds"]))
            cfg_text = (out / name / "config.yaml").read_text() if (out / name / "config.yaml").exists() else ""
            if cfg_text:
                import yaml

                c = yaml.safe_load(cfg_text)
                rec["epochs"] = c["train"]["epochs"]
                if mix != "none":
                    rec["mode"] = augment_options(c)["mode"]
        recs.append(rec)
    return pd.DataFrame(recs)


def markdown(df: pd.DataFrame, title: str) -> str:
    lines = [f"# {title}", "",
             ("mode: `variants` = K pre-mixed variants per training utterance, extracted once into the feature cache "
             "(partners from the parent's test group; variants mixing in validation audio excluded); `on_the_fly` = "
             "mixing every batch before the encoder; `-` = no mixup. WA / UA in %, mean ± std over folds."), "",
             "| row | mixup | mode | pooling | losses | folds | epochs | WA (%) | UA (%) | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        done = "ua_mean" in r and r["ua_mean"] == r["ua_mean"]
        wa = f"{r['wa_mean']:.2f} ± {r['wa_std']:.2f}" if done else "not run"
        ua = f"{r['ua_mean']:.2f} ± {r['ua_std']:.2f}" if done else "not run"
        folds = f"{int(r['folds'])} ({r['fold_ids']})" if done else ""
        wall = f"{r['wall_seconds']:.0f}" if done and r.get("wall_seconds") == r.get("wall_seconds") else ""
        epochs = int(r["epochs"]) if done else ""
        lines.append(f"| {r['row']} | {r['mixup']} | {r['mode']} | {r['pooling']} | {r['losses']} | {folds} | "
                     f"{epochs} | {wa} | {ua} | {wall} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ t-SNE
def tsne_plot(run_dir: str | Path, out_png: str | Path, fold: int | None = 0, seed: int = 0) -> dict:
    """t-SNE of test utterances before (pooled encoder features: per-layer frame means, averaged over layers) and
    after MLL (the model's embedding ``f``, ``foldK/test_embeddings.npy``), coloured by true emotion.

    ``fold``: one fold's test set (one model; default 0), or ``None`` for every fold's test set together (each
    embedded by its own fold's model). Returns silhouette scores of both views (true emotion as cluster labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    from serkit.config import load_config
    from serkit.train.cv import load_experiment_manifest
    from serkit.train.features import store_dir

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    folds = sorted(int(p.name[4:]) for p in run_dir.glob("fold*") if (p / "test_embeddings.npy").exists())
    if fold is not None:
        folds = [f for f in folds if f == fold]
    if not folds:
        raise ConfigError(f"{run_dir}: no fold with test_embeddings.npy")
    from serkit.train.logs import read_fold_predictions

    pred = pd.concat([read_fold_predictions(run_dir / f"fold{f}") for f in folds])
    after = np.concatenate([np.load(run_dir / f"fold{f}" / "test_embeddings.npy") for f in folds])
    from serkit.cache import FeatureStore

    manifest = load_experiment_manifest(cfg)
    store = FeatureStore(store_dir(cfg, manifest))
    d = store.hidden_size
    before = np.stack([store.pooled(i)[:, :d].mean(0) for i in pred["id"]])
    labels = pred["true"].astype(str).to_numpy()
    classes = sorted(set(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    scores = {}
    for ax, (title, x) in zip(axes, (("before (pooled encoder features)", before), ("after (MLL embedding f)", after))):
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, len(x) - 1)).fit_transform(x)
        scores[title.split()[0]] = float(silhouette_score(x, labels)) if len(classes) > 1 else float("nan")
        for c in classes:
            k = labels == c
            ax.scatter(y[k, 0], y[k, 1], s=8, label=c)
        ax.set_title(f"{title}\nsilhouette {scores[title.split()[0]]:.3f}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(markerscale=2, fontsize=8, loc="best")
    which = f"fold {folds[0]}" if fold is not None else f"all {len(folds)} folds"
    fig.suptitle(f"{cfg['name']}: t-SNE of test utterances ({which}, n={len(labels)})")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return scores


# ------------------------------------------------------------------------------------------------------ main
def run_ablation(config: str, out: str | Path, overrides: list[str] | None = None, rows: list[str] | None = None,
                 tsne: list[str] | None = None, folds: list[int] | None = None, log=print) -> pd.DataFrame:
    from serkit.config import load_config
    from serkit.train.cv import run_cv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config, overrides)
    if rows == ["steps"]:
        chosen = list(STEP_ROWS)
    else:
        chosen = [parse_row(r) for r in rows] if rows else list(DEFAULT_ROWS)
    title = f"MLL ablation: {base['name']} ({base['encoder']['id']})"
    for mix, pool, losses in chosen:
        name = row_name(mix, pool, losses)
        t = time.time()
        log(f"== row {name}")
        run_cv(config, out / name, list(overrides or []) + row_overrides(base, mix, pool, losses), folds_only=folds,
               log=log)
        log(f"== row {name} done [{time.time() - t:.0f} s]")
        df = collect(out, chosen, base)
        df.to_csv(out / "ablation.csv", index=False)
        atomic_write_text(out / "ablation.md", markdown(df, title))
    df = collect(out, chosen, base)
    df.to_csv(out / "ablation.csv", index=False)
    md = markdown(df, title)
    for name in tsne or []:
        if (out / name / "results.json").exists():
            scores = tsne_plot(out / name, out / f"tsne-{name}.png")
            md += f"\n![t-SNE {name}](tsne-{name}.png) silhouette before {scores['before']:.3f}, after {scores['after']:.3f}\n"
    atomic_write_text(out / "ablation.md", md)
    log(md)
    return df


def add_parsers(sub) -> argparse.ArgumentParser:
    """Register ``serkit ablate-mll CONFIG --out DIR [--set k=v ...] [--rows a,b] [--tsne row,...]``."""
    p = sub.add_parser("ablate-mll", help="MLL ablation table (mixup x pooling x losses), one run_cv per row")
    _args(p)
    p.set_defaults(func=_main_args)
    return p


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value (repeatable)")
    p.add_argument("--rows", default=None, help="comma-separated <mixup>-<pooling>-<losses> rows (default: all): "
                   + ", ".join(row_name(*r) for r in DEFAULT_ROWS) + "; or 'steps': the method off, then its parts "
                   "one at a time: " + ", ".join(row_name(*r) for r in STEP_ROWS))
    p.add_argument("--tsne", default=None, help="comma-separated rows to draw t-SNE plots for")
    p.add_argument("--folds", default=None, help="comma-separated fold indices (default: all; say so when reporting)")


def _main_args(args) -> int:
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    tsne = [r.strip() for r in args.tsne.split(",") if r.strip()] if args.tsne else None
    from serkit.run_lock import folder_lock
    from serkit.train.cli import parse_folds

    folds = parse_folds(args.folds)
    with folder_lock(args.out):  # one writer per run folder
        run_ablation(args.config, args.out, args.overrides, rows, tsne, folds)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m serkit.recipes.mll_ablation", description=__doc__.split("\n")[0])
    _args(p)
    return _main_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
