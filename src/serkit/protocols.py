"""Evaluation protocols: folds, validation carved from training speakers, and the leakage guard.

A protocol is a dict ``{"name": ..., **options}``:

- ``leave_one_session_out``: one fold per ``session`` (IEMOCAP 5, MSP-IMPROV 6).
- ``speaker_kfold`` (``k``; optional ``groups``: list of speaker lists): leave-k-speakers-out; speakers sorted and
  cut into ``k`` contiguous groups (RAVDESS 6 folds of 4 actors, EmoDB / TAVA 5 folds).
- ``leave_one_speaker_out``: one fold per speaker (SAVEE).
- ``official``: the corpus's own ``split`` column (MSP-Podcast: train / validation / test).
- ``random`` (``test_fraction`` 0.2, stratified by emotion): speaker-DEPENDENT, labelled so wherever reported.

Validation (``val_speakers``: count, or ``val_fraction`` of the training speakers, default 0.2) is carved from
the training speakers only, gender-balanced where possible. Folds are deterministic given ``seed`` and can be
saved to / loaded from JSON. :func:`check_leakage` refuses a speaker-independent fold whose test speakers
appear in its training or validation part.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError, LeakageError

SPEAKER_INDEPENDENT = {"leave_one_session_out", "speaker_kfold", "leave_one_speaker_out", "official"}
PROTOCOLS = SPEAKER_INDEPENDENT | {"random"}


@dataclass
class Fold:
    """One train / validation / test partition of a manifest, by utterance id."""

    index: int
    protocol: str
    speaker_independent: bool
    train: list[str]
    val: list[str]
    test: list[str]
    test_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fold:
        return cls(**d)


def option(opts: dict, key: str, kind: type, default):
    """``opts[key]`` as ``kind`` (int or float), ``default`` when absent; ConfigError naming ``protocol.key``."""
    value = opts.get(key, default)
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"protocol.{key} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}") from None


def _val_count(n_train_speakers: int, opts: dict) -> int:
    if "val_speakers" in opts:
        n = option(opts, "val_speakers", int, 1)
    else:
        n = max(1, round(option(opts, "val_fraction", float, 0.2) * n_train_speakers))
    if n >= n_train_speakers:
        raise ConfigError(
            f"protocol.val_speakers={n} leaves no training speaker (only {n_train_speakers} available)"
        )
    return n


def carve_validation(
    manifest: pd.DataFrame, train_ids: list[str], opts: dict, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Split training ids into (train, val, val_speakers) by speaker, gender-balanced, deterministic."""
    sub = manifest.set_index("id").loc[train_ids]
    speakers = sub.groupby("speaker")["gender"].first().sort_index()
    n_val = _val_count(len(speakers), opts)
    rng = np.random.default_rng(seed)
    by_gender = {g: sorted(s.index) for g, s in speakers.groupby(speakers)}
    for g in by_gender:
        rng.shuffle(by_gender[g])
    chosen: list[str] = []
    genders = sorted(by_gender)
    i = 0
    while len(chosen) < n_val:
        g = genders[i % len(genders)]
        if by_gender[g]:
            chosen.append(by_gender[g].pop())
        i += 1
        if i > 10 * (n_val + len(speakers)):
            break
    chosen_set = set(chosen)
    val = [u for u in train_ids if sub.at[u, "speaker"] in chosen_set]
    train = [u for u in train_ids if sub.at[u, "speaker"] not in chosen_set]
    return train, val, sorted(chosen)


def _random_val(train_ids: list[str], manifest: pd.DataFrame, frac: float, seed: int):
    from sklearn.model_selection import train_test_split

    labels = manifest.set_index("id").loc[train_ids, "emotion"].astype(str)
    strat = labels if labels.value_counts().min() >= 2 else None
    tr, va = train_test_split(train_ids, test_size=frac, random_state=seed, stratify=strat)
    return sorted(tr), sorted(va)


def make_folds(manifest: pd.DataFrame, protocol: dict, seed: int = 0) -> list[Fold]:
    """Build the folds of ``protocol`` over ``manifest`` (see module docs); every fold passes the leakage guard."""
    if "name" not in protocol:
        raise ConfigError(f"protocol needs a 'name' (one of {sorted(PROTOCOLS)}), got {protocol}")
    name = protocol["name"]
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol.name={name!r} is unknown; choose one of {sorted(PROTOCOLS)}")
    df = manifest.reset_index(drop=True)
    ids = df["id"].astype(str).tolist()
    folds: list[Fold] = []

    if name == "random":
        from sklearn.model_selection import train_test_split

        frac = option(protocol, "test_fraction", float, 0.2)
        labels = df["emotion"].astype(str)
        strat = labels if labels.value_counts().min() >= 2 else None
        train_ids, test_ids = train_test_split(ids, test_size=frac, random_state=seed, stratify=strat)
        tr, va = _random_val(sorted(train_ids), df, option(protocol, "val_fraction", float, 0.1), seed)
        folds.append(Fold(0, name, False, tr, va, sorted(test_ids)))
        return folds

    if name == "official":
        if "split" not in df.columns:
            raise ConfigError("protocol 'official' needs a 'split' column in the manifest")
        split = df["split"].astype(str)
        test_name = protocol.get("test_split", "test")
        tr = df.loc[split == "train", "id"].tolist()
        va = df.loc[split == "validation", "id"].tolist()
        te = df.loc[split == test_name, "id"].tolist()
        if not (tr and va and te):
            raise ConfigError(f"protocol 'official': empty part (train {len(tr)}, validation {len(va)}, {test_name} {len(te)})")
        test_spk = sorted(set(df.loc[split == test_name, "speaker"]) - {"unknown"})
        fold = Fold(0, name, True, tr, va, te, test_spk)
        check_leakage(fold, df, ignore_speakers={"unknown"})
        return [fold]

    if name == "leave_one_session_out":
        if "session" not in df.columns:
            raise ConfigError("protocol 'leave_one_session_out' needs a 'session' column in the manifest")
        groups = [sorted(df.loc[df["session"] == s, "speaker"].unique()) for s in sorted(df["session"].unique())]
        group_col = "session"
        group_keys = sorted(df["session"].unique())
    else:
        speakers = sorted(df["speaker"].unique())
        if "unknown" in speakers:
            raise ConfigError(f"protocol {name!r} needs speaker labels; the manifest has speaker 'unknown'")
        if name == "leave_one_speaker_out":
            groups = [[s] for s in speakers]
        elif "groups" in protocol:
            groups = [sorted(map(str, g)) for g in protocol["groups"]]
            missing = set(speakers) - {s for g in groups for s in g}
            if missing:
                raise ConfigError(f"protocol.groups leaves speakers out of every test fold: {sorted(missing)}")
        else:
            k = option(protocol, "k", int, 5)
            if not 2 <= k <= len(speakers):
                raise ConfigError(f"protocol.k={k} must be between 2 and the number of speakers ({len(speakers)})")
            size = math.ceil(len(speakers) / k)
            bounds = np.linspace(0, len(speakers), k + 1).round().astype(int) if len(speakers) % k else None
            if bounds is None:
                groups = [speakers[i * size : (i + 1) * size] for i in range(k)]
            else:
                groups = [speakers[bounds[i] : bounds[i + 1]] for i in range(k)]
        group_col = "speaker"
        group_keys = None

    for k, group in enumerate(groups):
        if group_col == "session":
            test_mask = df["session"] == group_keys[k]
        else:
            test_mask = df["speaker"].isin(group)
        test_ids = df.loc[test_mask, "id"].tolist()
        rest = df.loc[~test_mask, "id"].tolist()
        tr, va, va_spk = carve_validation(df, rest, protocol, seed + k)
        fold = Fold(k, name, True, tr, va, test_ids, sorted(df.loc[test_mask, "speaker"].unique()), va_spk)
        check_leakage(fold, df)
        folds.append(fold)
    return folds


def check_leakage(fold: Fold, manifest: pd.DataFrame, ignore_speakers: set[str] | None = None) -> None:
    """Raise :class:`LeakageError` if ids overlap between parts, or — for a speaker-independent fold — a test
    speaker also appears in training or validation."""
    tr, va, te = set(fold.train), set(fold.val), set(fold.test)
    for a, b, what in ((tr, te, "train/test"), (va, te, "validation/test"), (tr, va, "train/validation")):
        if a & b:
            raise LeakageError(f"fold {fold.index}: {len(a & b)} utterance(s) in both {what}, e.g. {sorted(a & b)[:3]}")
    if not fold.speaker_independent:
        return
    spk = manifest.set_index("id")["speaker"].astype(str)
    ignore = ignore_speakers or set()
    test_spk = set(spk.loc[list(te)]) - ignore
    seen = set(spk.loc[list(tr | va)]) - ignore
    leaked = sorted(test_spk & seen)
    if leaked:
        raise LeakageError(
            f"fold {fold.index} ({fold.protocol}) is labelled speaker-independent but test speaker(s) {leaked} "
            "also appear in training or validation; refusing to run"
        )


def save_folds(folds: list[Fold], path: str | Path) -> Path:
    from serkit.io import atomic_write_text

    return atomic_write_text(path, json.dumps([f.to_dict() for f in folds], indent=1))


def load_folds(path: str | Path) -> list[Fold]:
    return [Fold.from_dict(d) for d in json.loads(Path(path).read_text())]


def describe(folds: list[Fold], manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per fold: sizes, test speakers, and the speaker-independence label."""
    return pd.DataFrame(
        [
            {
                "fold": f.index,
                "protocol": f.protocol + ("" if f.speaker_independent else " (speaker-dependent)"),
                "n_train": len(f.train),
                "n_val": len(f.val),
                "n_test": len(f.test),
                "test_speakers": " ".join(f.test_speakers),
                "val_speakers": " ".join(f.val_speakers),
            }
            for f in folds
        ]
    )
