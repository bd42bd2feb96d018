"""Evaluation protocols: folds, validation carved from training speakers, and the leakage guard.

A protocol is a dict ``{"name": ..., **options}``:

- ``leave_one_session_out``: one fold per ``session`` (IEMOCAP 5, MSP-IMPROV 6).
- ``speaker_kfold`` (``k``; ``grouping``; optional ``groups``: list of speaker lists): ``k`` speaker-disjoint test
  groups. ``grouping: balanced`` (the default) assigns speakers, largest first (ties by name), to the group with
  the fewest utterances; among groups about as full (within 5 % of a mean group), the one whose class counts most
  lack the speaker's classes, then the lowest index: groups of about equal size, as class-balanced as the
  speakers allow, deterministic. ``grouping: sorted`` is the published grouping of corpora whose speakers are
  alike in size: speakers sorted by name and cut into ``k`` contiguous groups (RAVDESS 6 folds of 4 actors,
  EmoDB / TAVA 5 folds); those corpora's readers and configs name it.
- ``leave_one_speaker_out``: one fold per speaker (SAVEE).
- ``official``: the corpus's own ``split`` column (MSP-Podcast: train / validation / test).
- ``random`` (``test_fraction`` 0.2, stratified by emotion): speaker-DEPENDENT, labelled so wherever reported.
- ``cross_corpus`` (``train``: corpus names and ``test``: one corpus name, or ``pairs``: a list of
  ``[train corpora, test corpus]``; default: every corpus of the manifest is the test corpus once, trained on all
  the others): train on some corpora, test on another (the manifest's ``corpus`` column). Validation speakers
  come from the training corpora only.

``training_only`` (a list of corpus names, any protocol but ``cross_corpus``): those corpora's utterances join the
training part of every fold and never its validation or test part; the folds are built over the other corpora's
utterances exactly as without them (one corpus's folds, with more training data from another).

Validation (``val_speakers``: count, or ``val_fraction`` of the training speakers, default 0.2) is carved from
the training speakers only: that many speakers drawn gender-balanced (seeded); then, while the validation part
holds less than ``val_min_share`` (default 0.1) of the fold's training utterances or lacks one of its classes,
more training speakers are moved to it (the one that adds most missing classes, else the one that brings the
share closest to the minimum; ties by name), as long as training keeps every class and at least half of the
utterances. A validation part that still falls short is a warning on the fold (``Fold.warnings``, printed by
``serkit folds`` and ``serkit cv``, written to results.json), as are a test part that lacks a class or holds
fewer than half the mean test size. ``classes`` (default ``emotion``; ``null`` for none, e.g. dimensional
corpora) names the label column that grouping and validation balance and the warnings check. Folds are
deterministic given ``seed`` and can be saved to / loaded from JSON. :func:`check_leakage` refuses a
speaker-independent fold whose test speakers appear in its training or validation part.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.errors import ConfigError, LeakageError

SPEAKER_INDEPENDENT = {"leave_one_session_out", "speaker_kfold", "leave_one_speaker_out", "official", "cross_corpus"}
PROTOCOLS = SPEAKER_INDEPENDENT | {"random"}
GROUPINGS = ("balanced", "sorted")
#: Default minimum share of a fold's training utterances that validation should hold.
VAL_MIN_SHARE = 0.1


@dataclass
class Fold:
    """One train / validation / test partition of a manifest, by utterance id.

    ``warnings``: what is weak about the fold (a validation part below its minimum share or lacking a class, a
    test part lacking a class or far smaller than the others); empty for a sound fold. ``train_corpora`` /
    ``test_corpus`` name the corpora of a ``cross_corpus`` fold (empty otherwise)."""

    index: int
    protocol: str
    speaker_independent: bool
    train: list[str]
    val: list[str]
    test: list[str]
    test_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    train_corpora: list[str] = field(default_factory=list)
    test_corpus: str = ""

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


def label_column(protocol: dict, manifest: pd.DataFrame) -> str | None:
    """The column whose classes folds and validation balance (``protocol.classes``, default ``emotion``), or None."""
    col = protocol.get("classes", "emotion")
    return col if col and col in manifest.columns else None


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
    manifest: pd.DataFrame, train_ids: list[str], opts: dict, seed: int, classes: str | None = "emotion"
) -> tuple[list[str], list[str], list[str]]:
    """Split training ids into (train, val, val_speakers) by speaker, deterministic (see the module docs):
    ``val_speakers`` / ``val_fraction`` speakers drawn gender-balanced, then topped up to ``val_min_share`` of the
    utterances and every class of column ``classes`` (None: no class check) where the training part allows."""
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
    chosen = _top_up(sub, chosen, option(opts, "val_min_share", float, VAL_MIN_SHARE), classes)
    chosen_set = set(chosen)
    val = [u for u in train_ids if sub.at[u, "speaker"] in chosen_set]
    train = [u for u in train_ids if sub.at[u, "speaker"] not in chosen_set]
    return train, val, sorted(chosen)


def _top_up(sub: pd.DataFrame, chosen: list[str], min_share: float, classes: str | None) -> list[str]:
    """Add training speakers to ``chosen`` until validation holds ``min_share`` of ``sub`` and every class."""
    size = sub.groupby("speaker").size()
    total = int(size.sum())
    spk_classes = ({s: set(g.astype(str)) for s, g in sub.groupby("speaker")[classes]} if classes else
                   {s: set() for s in size.index})
    all_classes = set().union(*spk_classes.values())
    chosen = list(chosen)

    def state(ch):
        n = int(size[ch].sum()) if ch else 0
        covered = set().union(*(spk_classes[s] for s in ch)) if ch else set()
        rest = [s for s in size.index if s not in ch]
        kept = set().union(*(spk_classes[s] for s in rest)) if rest else set()
        return n, covered, kept, rest

    while True:
        n, covered, _, rest = state(chosen)
        missing = all_classes - covered
        if n >= min_share * total - 1e-9 and not missing:
            return chosen
        options = []
        for s in rest:
            n2, _, kept2, rest2 = state(chosen + [s])
            if not rest2 or kept2 != all_classes or n2 > total / 2:
                continue  # training must keep every class and most of the utterances
            gain = len(missing & spk_classes[s])
            if n >= min_share * total - 1e-9 and gain == 0:
                continue  # share met: only a speaker that adds a missing class is worth moving
            options.append((-gain, abs(n2 - min_share * total), s))
        if not options:
            return chosen
        chosen.append(min(options)[2])


def _random_val(train_ids: list[str], manifest: pd.DataFrame, frac: float, seed: int):
    from sklearn.model_selection import train_test_split

    labels = manifest.set_index("id").loc[train_ids, "emotion"].astype(str)
    strat = labels if labels.value_counts().min() >= 2 else None
    tr, va = train_test_split(train_ids, test_size=frac, random_state=seed, stratify=strat)
    return sorted(tr), sorted(va)


def balanced_groups(manifest: pd.DataFrame, k: int, classes: str | None = "emotion") -> list[list[str]]:
    """``k`` speaker groups of about equal utterance count (and class mix where the speakers allow); see the module
    docs. Deterministic: depends only on the speakers' utterance (and class) counts and names."""
    spk = manifest["speaker"].astype(str)
    size = spk.value_counts()
    order = sorted(size.index, key=lambda s: (-int(size[s]), s))
    if classes:
        counts = pd.crosstab(spk, manifest[classes].astype(str))
    else:
        counts = pd.DataFrame(index=size.index)
    target = counts.sum() / k  # per class, what a group should hold
    slack = 0.05 * len(manifest) / k
    n = np.zeros(k)
    held = np.zeros((k, counts.shape[1]))
    groups: list[list[str]] = [[] for _ in range(k)]
    for s in order:
        need = np.maximum(target.to_numpy() - held, 0.0)  # (k, classes) what each group still lacks
        fill = np.minimum(need, counts.loc[s].to_numpy()).sum(1) if counts.shape[1] else np.zeros(k)
        near = [g for g in range(k) if n[g] <= n.min() + slack]
        g = min(near, key=lambda g: (-fill[g], n[g], g))
        groups[g].append(s)
        n[g] += size[s]
        if counts.shape[1]:
            held[g] += counts.loc[s].to_numpy()
    return [sorted(g) for g in groups]


def sorted_groups(speakers: list[str], k: int) -> list[list[str]]:
    """Speakers sorted by name, cut into ``k`` contiguous groups (the published RAVDESS / EmoDB / TAVA folds)."""
    speakers = sorted(speakers)
    size = math.ceil(len(speakers) / k)
    if len(speakers) % k == 0:
        return [speakers[i * size : (i + 1) * size] for i in range(k)]
    bounds = np.linspace(0, len(speakers), k + 1).round().astype(int)
    return [speakers[bounds[i] : bounds[i + 1]] for i in range(k)]


def _cross_corpus_pairs(protocol: dict, corpora: list[str]) -> list[tuple[list[str], str]]:
    if "pairs" in protocol:
        pairs = [([p[0]] if isinstance(p[0], str) else list(p[0]), str(p[1])) for p in protocol["pairs"]]
    elif "test" in protocol:
        train = protocol.get("train") or [c for c in corpora if c != protocol["test"]]
        pairs = [([train] if isinstance(train, str) else list(train), str(protocol["test"]))]
    else:
        pairs = [([c for c in corpora if c != t], t) for t in corpora]
    for train, test in pairs:
        unknown = sorted({*train, test} - set(corpora))
        if unknown:
            raise ConfigError(f"protocol cross_corpus names corpora {unknown} that the manifest lacks "
                              f"(its corpus column holds {corpora})")
        if test in train or not train:
            raise ConfigError(f"protocol cross_corpus: test corpus {test!r} must differ from the training "
                              f"corpora {train} (and some must be given)")
    return pairs


def make_folds(manifest: pd.DataFrame, protocol: dict, seed: int = 0) -> list[Fold]:
    """Build the folds of ``protocol`` over ``manifest`` (see module docs); every fold passes the leakage guard."""
    if "name" not in protocol:
        raise ConfigError(f"protocol needs a 'name' (one of {sorted(PROTOCOLS)}), got {protocol}")
    name = protocol["name"]
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol.name={name!r} is unknown; choose one of {sorted(PROTOCOLS)}")
    full = manifest.reset_index(drop=True)
    df, extra = _training_only(full, protocol)
    classes = label_column(protocol, df)
    if name == "random":
        folds = _random_fold(df, protocol, seed)
    elif name == "official":
        folds = _official_fold(df, protocol)
    elif name == "cross_corpus":
        folds = _cross_corpus_folds(df, protocol, seed, classes)
    else:
        folds = _held_out_group_folds(df, protocol, seed, classes)
    folds = _with_warnings(folds, df, protocol, classes)  # of the folds as built, before the extra training data
    for f in folds:
        f.train = f.train + extra
        check_leakage(f, full)
    return folds


def _training_only(df: pd.DataFrame, protocol: dict) -> tuple[pd.DataFrame, list[str]]:
    """``(the utterances the folds are built over, the ids of protocol.training_only's corpora)``."""
    names = protocol.get("training_only") or []
    if not names:
        return df, []
    if not isinstance(names, list):
        raise ConfigError(f"protocol.training_only must be a list of corpus names, got {names!r}")
    if protocol["name"] == "cross_corpus":
        raise ConfigError("protocol.training_only does not apply to cross_corpus (its train / test name the corpora)")
    corpus = df["corpus"].astype(str) if "corpus" in df.columns else pd.Series("", index=df.index)
    names, have = sorted(map(str, names)), sorted(corpus.unique())
    if set(names) - set(have) or set(have) <= set(names):
        raise ConfigError(f"protocol.training_only names {names}: the manifest's corpora are {have}; name some "
                          "of them and leave at least one to build the folds over")
    extra = corpus.isin(names)
    return df[~extra].reset_index(drop=True), df.loc[extra, "id"].astype(str).tolist()


def _random_fold(df: pd.DataFrame, protocol: dict, seed: int) -> list[Fold]:
    """``random``: one fold, ``test_fraction`` of the utterances held out (stratified by emotion when every class
    has two), ``val_fraction`` of the rest for validation; speakers may be shared (not speaker-independent)."""
    from sklearn.model_selection import train_test_split

    ids = df["id"].astype(str).tolist()
    frac = option(protocol, "test_fraction", float, 0.2)
    labels = df["emotion"].astype(str)
    strat = labels if labels.value_counts().min() >= 2 else None
    train_ids, test_ids = train_test_split(ids, test_size=frac, random_state=seed, stratify=strat)
    tr, va = _random_val(sorted(train_ids), df, option(protocol, "val_fraction", float, 0.1), seed)
    return [Fold(0, "random", False, tr, va, sorted(test_ids))]


def _official_fold(df: pd.DataFrame, protocol: dict) -> list[Fold]:
    """``official``: one fold from the manifest's ``split`` column (train / validation / ``test_split``)."""
    if "split" not in df.columns:
        raise ConfigError("protocol 'official' needs a 'split' column in the manifest")
    split = df["split"].astype(str)
    test_name = protocol.get("test_split", "test")
    tr = df.loc[split == "train", "id"].tolist()
    va = df.loc[split == "validation", "id"].tolist()
    te = df.loc[split == test_name, "id"].tolist()
    if not (tr and va and te):
        raise ConfigError(f"protocol 'official': empty part (train {len(tr)}, validation {len(va)}, "
                          f"{test_name} {len(te)})")
    test_spk = sorted(set(df.loc[split == test_name, "speaker"]) - {"unknown"})
    fold = Fold(0, "official", True, tr, va, te, test_spk)
    check_leakage(fold, df, ignore_speakers={"unknown"})
    return [fold]


def _cross_corpus_folds(df: pd.DataFrame, protocol: dict, seed: int, classes: str | None) -> list[Fold]:
    """``cross_corpus``: one fold per (training corpora, test corpus) pair; validation carved from the training
    corpora."""
    if "corpus" not in df.columns:
        raise ConfigError("protocol 'cross_corpus' needs a 'corpus' column in the manifest")
    corpus = df["corpus"].astype(str)
    folds = []
    for k, (train_c, test_c) in enumerate(_cross_corpus_pairs(protocol, sorted(corpus.unique()))):
        test_mask = corpus == test_c
        rest = df.loc[corpus.isin(train_c), "id"].tolist()
        tr, va, va_spk = carve_validation(df, rest, protocol, seed + k, classes)
        fold = Fold(k, "cross_corpus", True, tr, va, df.loc[test_mask, "id"].tolist(),
                    sorted(df.loc[test_mask, "speaker"].astype(str).unique()), va_spk,
                    train_corpora=sorted(train_c), test_corpus=test_c)
        check_leakage(fold, df)
        folds.append(fold)
    return folds


def _speaker_groups(df: pd.DataFrame, protocol: dict, classes: str | None) -> list[list[str]]:
    """The test speaker groups of ``leave_one_speaker_out`` (one speaker each), of given ``groups`` (every speaker
    in one), or of ``speaker_kfold`` (``k`` groups by ``grouping``: balanced or sorted)."""
    name = protocol["name"]
    speakers = sorted(df["speaker"].unique())
    if "unknown" in speakers:
        raise ConfigError(f"protocol {name!r} needs speaker labels; the manifest has speaker 'unknown'")
    if name == "leave_one_speaker_out":
        return [[s] for s in speakers]
    if "groups" in protocol:
        groups = [sorted(map(str, g)) for g in protocol["groups"]]
        missing = set(speakers) - {s for g in groups for s in g}
        if missing:
            raise ConfigError(f"protocol.groups leaves speakers out of every test fold: {sorted(missing)}")
        return groups
    k = option(protocol, "k", int, 5)
    if not 2 <= k <= len(speakers):
        raise ConfigError(f"protocol.k={k} must be between 2 and the number of speakers ({len(speakers)})")
    grouping = protocol.get("grouping", "balanced")
    if grouping not in GROUPINGS:
        raise ConfigError(f"protocol.grouping={grouping!r} is not one of {GROUPINGS}")
    return sorted_groups(speakers, k) if grouping == "sorted" else balanced_groups(df, k, classes)


def _held_out_group_folds(df: pd.DataFrame, protocol: dict, seed: int, classes: str | None) -> list[Fold]:
    """One fold per held-out group: a session (``leave_one_session_out``) or a speaker group (see
    :func:`_speaker_groups`); validation carved from the rest with seed ``seed + fold index``."""
    name = protocol["name"]
    if name == "leave_one_session_out":
        if "session" not in df.columns:
            raise ConfigError("protocol 'leave_one_session_out' needs a 'session' column in the manifest")
        sessions = sorted(df["session"].unique())
        test_masks = [df["session"] == s for s in sessions]
    else:
        test_masks = [df["speaker"].isin(group) for group in _speaker_groups(df, protocol, classes)]
    folds = []
    for k, test_mask in enumerate(test_masks):
        test_ids = df.loc[test_mask, "id"].tolist()
        rest = df.loc[~test_mask, "id"].tolist()
        tr, va, va_spk = carve_validation(df, rest, protocol, seed + k, classes)
        fold = Fold(k, name, True, tr, va, test_ids, sorted(df.loc[test_mask, "speaker"].unique()), va_spk)
        check_leakage(fold, df)
        folds.append(fold)
    return folds


def _with_warnings(folds: list[Fold], df: pd.DataFrame, protocol: dict, classes: str | None) -> list[Fold]:
    """Fill each fold's ``warnings`` (see :class:`Fold`)."""
    lab = df.set_index("id")[classes].astype(str) if classes else None
    mean_test = float(np.mean([len(f.test) for f in folds]))
    min_share = option(protocol, "val_min_share", float, VAL_MIN_SHARE)
    for f in folds:
        w = []
        if len(f.test) < 0.5 * mean_test:
            w.append(f"test part holds {len(f.test)} utterances, less than half the mean test size ({mean_test:.0f})")
        share = len(f.val) / max(1, len(f.train) + len(f.val))
        if share < min_share - 1e-9:
            w.append(f"validation holds {len(f.val)} utterances, {share:.1%} of the fold's training utterances "
                     f"(val_min_share {min_share:.0%}): model selection is noisy")
        if lab is not None:
            train_c = set(lab.loc[f.train])
            for part, ids in (("validation", f.val), ("test", f.test)):
                have = set(lab.loc[ids])
                lacking = sorted((train_c | have) - have) if part == "test" else sorted(train_c - have)
                if lacking:
                    w.append(f"{part} part lacks class(es) {lacking}")
            extra = sorted(set(lab.loc[f.test]) - train_c)
            if extra:
                w.append(f"test class(es) {extra} never occur in training")
            if len(set(lab.loc[f.test])) == 1:
                w.append(f"test part holds one class only ({lab.loc[f.test].iloc[0]!r}); its UA is that class's recall")
        f.warnings = w
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
                "test_speakers": " ".join(f.test_speakers) if not f.test_corpus else
                f"{f.test_corpus} ({len(f.test_speakers)} speakers)",
                "val_speakers": " ".join(f.val_speakers),
            }
            for f in folds
        ]
    )


def class_counts(folds: list[Fold], manifest: pd.DataFrame, column: str = "emotion", part: str = "test"
                 ) -> pd.DataFrame:
    """Utterances per class (columns) in each fold's ``part`` (``train``, ``val`` or ``test``; rows)."""
    lab = manifest.set_index("id")[column].astype(str)
    rows = {f.index: lab.loc[getattr(f, part)].value_counts() for f in folds}
    return pd.DataFrame(rows).T.reindex(columns=sorted(lab.unique())).fillna(0).astype(int).rename_axis("fold")


def summary_text(folds: list[Fold], manifest: pd.DataFrame, protocol: dict) -> str:
    """What ``serkit folds`` and ``serkit cv`` print: per fold sizes and speakers, the test (and validation) class
    counts, and every fold warning."""
    parts = [describe(folds, manifest).to_string(index=False)]
    col = label_column(protocol, manifest)
    if col:
        for part, title in (("test", "test"), ("val", "validation")):
            parts.append(f"{title} utterances per {col}:\n" + class_counts(folds, manifest, col, part).to_string())
    for f in folds:
        parts.extend(f"warning: fold {f.index}: {w}" for w in f.warnings)
    return "\n".join(parts)
