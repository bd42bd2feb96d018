"""Pre-mixed waveform-mixup variants: K mixed copies of every utterance, extracted once into a feature cache.

Running the encoder on freshly mixed waveforms every batch (on-the-fly mixup) is slow on a CPU. The alternative
here mixes each utterance ``u`` with ``k`` partners once, stores the mixed audio's encoder features in a separate
feature store, and lets a recipe add the variants to the training items of a fold, with soft labels.

Honesty rule: a variant must never contain audio of a speaker that is *tested* in a fold where the variant is
*trained on*, nor audio of that fold's *validation* speakers. The design that guarantees the first part:

* the partner of ``u`` is drawn from ``u``'s own **test group** (the utterances that share ``u``'s test fold:
  RAVDESS ``speaker_kfold``: ``u``'s group of 4 actors; leave-one-session-out: ``u``'s session); so whenever
  ``u`` is a training item of a fold, its group is not that fold's test group, and neither is the partner's;
* :func:`valid_variants` then keeps, for a fold, only variants whose parent **and** partner are training items of
  that fold (this drops partners that are validation items, and would also catch any test partner).

Utterances that are tested in no fold (e.g. the ``official`` protocol's training split) form one extra group.

Functions:
    :func:`fold_test_groups` (id -> group), :func:`plan_variants` (who mixes with whom, no audio),
    :func:`render_variants` (mix and write audio files), :func:`valid_variants` (per fold),
    :func:`soft_labels` (rows of class probabilities), :func:`build_mixup` (config -> a mixup object),
    :func:`ensure_variant_store` (plan + render + extract into a store keyed by the mixup spec; resumable),
    :func:`extract_rendered` / :func:`open_rendered` (rendered audio -> a finished store; shared with
    :mod:`serkit.augment.speed`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError

__all__ = [
    "build_mixup",
    "ensure_variant_store",
    "extract_rendered",
    "fold_test_groups",
    "open_rendered",
    "plan_variants",
    "render_variants",
    "soft_labels",
    "valid_variants",
    "variant_spec_key",
]

NO_TEST_GROUP = -1


def build_mixup(name: str, **opts):
    """A :class:`~serkit.augment.mixup.WaveformMixup` from a config name (``eam`` | ``lam``) and options
    (``p``, ``snr_db`` (EAM), ``placement`` (LAM), ``different_class``); ``none`` gives ``None``."""
    from serkit.augment.mixup import EnergyAdaptiveMixup, LabelAdaptiveMixup

    name = (name or "none").lower()
    common = {"p": float(opts.get("p", 1.0)), "different_class": bool(opts.get("different_class", False))}
    if name == "none":
        return None
    if name == "eam":
        return EnergyAdaptiveMixup(snr_db=tuple(opts.get("snr_db", (-5.0, 10.0))), **common)
    if name == "lam":
        return LabelAdaptiveMixup(placement=str(opts.get("placement", "start")), **common)
    raise ConfigError(f"augment.name={name!r} is unknown; choose eam, lam or none")


def fold_test_groups(manifest: pd.DataFrame, folds) -> dict[str, int]:
    """``id -> index of the fold whose test part holds it`` (``-1`` for ids tested in no fold)."""
    groups = {str(u): NO_TEST_GROUP for u in manifest["id"]}
    for f in folds:
        for u in f.test:
            groups[str(u)] = int(f.index)
    return groups


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(k).encode()) for k in keys])


def plan_variants(manifest: pd.DataFrame, folds, k: int, seed: int = 0, different_class: bool = False
                  ) -> pd.DataFrame:
    """Who mixes with whom: ``k`` variants per utterance, each partner drawn from the parent's test group.

    Returns a table with columns ``id`` (``<parent>~v<j>``), ``parent``, ``partner``, ``variant`` (j), ``group``,
    ``emotion`` / ``partner_emotion``, and the parent's ``speaker``, ``gender`` (and ``corpus``, ``session`` when
    present). Partners are distinct from the parent and, when the group is large enough, distinct from each other;
    with ``different_class`` they come from another emotion class where the group has one. Deterministic per
    ``(seed, parent)``: adding or removing other utterances does not change an utterance's draws unless its group
    changes.
    """
    if k < 1:
        raise ConfigError(f"augment.k must be >= 1, got {k}")
    df = manifest.copy()
    df["id"] = df["id"].astype(str)
    groups = fold_test_groups(df, folds)
    df["group"] = df["id"].map(groups)
    emo = df.set_index("id")["emotion"].astype(str)
    keep_cols = [c for c in ("speaker", "gender", "corpus", "session") if c in df.columns]
    info = df.set_index("id")
    rows = []
    for g, sub in df.groupby("group", sort=True):
        members = np.array(sorted(sub["id"]))
        for u in members:
            others = members[members != u]
            if not len(others):
                continue
            if different_class:
                diff = others[emo.loc[others].to_numpy() != emo[u]]
                if len(diff):
                    others = diff
            rng = _rng(seed, "partner", u)
            picks = rng.choice(others, size=k, replace=len(others) < k)
            for j, p in enumerate(picks):
                row = {"id": f"{u}~v{j}", "parent": u, "partner": str(p), "variant": j, "group": int(g),
                       "emotion": emo[u], "partner_emotion": emo[str(p)]}
                row.update({c: info.at[u, c] for c in keep_cols})
                rows.append(row)
    return pd.DataFrame(rows)


def render_variants(plan: pd.DataFrame, manifest: pd.DataFrame, mixup, out_dir: str | Path, seed: int = 0,
                    read=None) -> pd.DataFrame:
    """Mix every planned pair with ``mixup.mix_pair`` and write float32 16 kHz AU files under ``out_dir``.

    Returns ``plan`` plus ``path``, ``duration`` (s) and ``lam`` (the partner's label weight). The mixing draws
    come from ``(seed, variant id)``, so a re-render, in any order or of any subset, gives identical files
    (identical content hashes, so a resumed variant store keeps what it already extracted). AU, not WAV:
    libsndfile stamps float WAVs with the time of writing (PEAK chunk).
    """
    import soundfile as sf

    from serkit.audio import read_audio
    from serkit.constants import SAMPLE_RATE

    read = read or read_audio
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = manifest.assign(id=manifest["id"].astype(str)).set_index("id")["path"]
    cache: dict[str, np.ndarray] = {}

    def wave(u: str) -> np.ndarray:
        if u not in cache:
            cache[u] = read(paths[u])
        return cache[u]

    out = plan.copy()
    lam, dur, path = [], [], []
    # parents in order; drop a parent's audio once its variants are written (partners come from one group)
    for g, sub in plan.groupby("group", sort=True):
        for r in sub.itertuples(index=False):
            mixed, lm, _ = mixup.mix_pair(wave(r.parent), wave(r.partner), _rng(seed, "mix", r.id))
            mixed = np.asarray(mixed, dtype=np.float32)
            p = out_dir / f"{r.id.replace('/', '_')}.au"
            sf.write(str(p), mixed, SAMPLE_RATE, format="AU", subtype="FLOAT")
            lam.append(float(lm))
            dur.append(len(mixed) / SAMPLE_RATE)
            path.append(str(p))
        cache.clear()
    order = pd.concat([sub for _, sub in plan.groupby("group", sort=True)]).index
    out.loc[order, "lam"] = lam
    out.loc[order, "duration"] = dur
    out.loc[order, "path"] = path
    return out


def valid_variants(table: pd.DataFrame, fold) -> pd.DataFrame:
    """The variants a fold may train on: parent and partner are both training items of ``fold`` (so no test or
    validation audio is mixed in)."""
    train = set(map(str, fold.train))
    keep = table["parent"].astype(str).isin(train) & table["partner"].astype(str).isin(train)
    return table[keep].reset_index(drop=True)


def soft_labels(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """``(len(table), len(classes))`` float32: ``(1 - lam) * onehot(emotion) + lam * onehot(partner_emotion)``."""
    idx = {c: i for i, c in enumerate(classes)}
    n = len(table)
    y = np.zeros((n, len(classes)), dtype=np.float64)
    lam = table["lam"].to_numpy(dtype=np.float64)
    a = table["emotion"].astype(str).map(idx).to_numpy()
    b = table["partner_emotion"].astype(str).map(idx).to_numpy()
    rows = np.arange(n)
    np.add.at(y, (rows, a), 1.0 - lam)
    np.add.at(y, (rows, b), lam)
    return y.astype(np.float32)


def variant_spec_key(spec: dict, folds) -> str:
    """Short hash of what makes a variant store: the mixup spec (name, k, seed, options) and the test groups."""
    groups = sorted(sorted(map(str, f.test)) for f in folds)
    blob = json.dumps({"spec": spec, "groups": groups}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def ensure_variant_store(manifest: pd.DataFrame, folds, spec: dict, encoder: dict, base_dir: str | Path,
                         progress: bool = True, log=print):
    """Plan, render and extract the variants described by ``spec`` (``name``, ``k``, ``seed``, mixup options) into
    ``<base_dir>-variants-<name>-k<k>-<key>``; returns ``(FeatureStore, variants table)``. Resumable: a finished
    store (``variants.csv`` written and every id present) is opened without rendering anything; the temporary audio
    files are deleted after extraction."""
    spec = {k: v for k, v in spec.items() if k not in ("mode",)}
    name, k, seed = str(spec["name"]).lower(), int(spec["k"]), int(spec["seed"])
    key = variant_spec_key(spec, folds)
    root = Path(f"{base_dir}-variants-{name}-k{k}-{key}")
    done = open_rendered(root)
    if done is not None:
        return done
    mixup = build_mixup(name, **{k: v for k, v in spec.items() if k != "name"})
    if mixup is None:
        raise ConfigError("augment.mode=variants needs augment.name eam or lam")
    plan = plan_variants(manifest, folds, k, seed, bool(spec.get("different_class", False)))
    log(f"rendering {len(plan)} {name} variants (k={k}) -> {root}")
    table = render_variants(plan, manifest, mixup, root / "audio", seed)
    return extract_rendered(table, encoder, root, progress=progress, log=log)


def open_rendered(root: str | Path, table_name: str = "variants.csv"):
    """``(FeatureStore, table)`` of a finished variant store at ``root`` (its table ``table_name`` written and
    every id extracted), else None."""
    from serkit.features.store import FeatureStore

    root = Path(root)
    table_path = root / table_name
    if not (table_path.exists() and (root / "store.json").exists()):
        return None
    table = pd.read_csv(table_path, dtype={"id": str, "parent": str, "partner": str, "speaker": str})
    store = FeatureStore(root)
    return (store, table) if all(i in store for i in table["id"]) else None


def extract_rendered(table: pd.DataFrame, encoder: dict, root: str | Path, progress: bool = True, log=print,
                     table_name: str = "variants.csv", audio_dir: str | Path | None = None):
    """Extract the rendered audio of ``table`` (``id``, ``path``, ``duration``) with ``encoder`` (a config's
    ``encoder`` section) into the feature store ``root``; write its table ``table_name`` (``table`` without paths;
    rows that failed are left out and counted) and delete the audio (``audio_dir``, default ``root/audio``).
    Returns ``(FeatureStore, table)``. Resumable: audio the store already holds (same content) is not extracted
    again."""
    from serkit.features.extraction import extract_to_cache, extraction_options
    from serkit.features.store import FeatureStore

    root = Path(root)
    extract_to_cache(table[["id", "path", "duration"]], encoder["id"], encoder["layers"], root,
                     **extraction_options(encoder), progress=progress)
    store = FeatureStore(root)
    missing = [i for i in table["id"] if i not in store]
    if missing:
        log(f"{len(missing)} variant(s) have no features (see {root}/errors.json); they are left out")
        table = table[table["id"].isin(set(store.ids()))].reset_index(drop=True)
    from serkit.io import atomic_write_text

    table = table.drop(columns=["path"])  # the audio is deleted below
    atomic_write_text(root / table_name, table.to_csv(index=False))
    shutil.rmtree(Path(audio_dir) if audio_dir else root / "audio", ignore_errors=True)
    return store, table
