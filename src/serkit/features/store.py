"""The on-disk feature store: frame-level encoder features and pooled statistics per utterance.

Layout of a store folder::

    store.json                  what the features are: encoder id, revision, mode, layers, sample rate, dtype,
                                precision the encoder ran in
    index.jsonl                 one line per finished utterance: {"id", "hash", "frames", "seconds"}; last wins
    .lock                       the writers' lock file (holds the pid of the last holder)
    index.rank<r>.jsonl         the same, written by rank r of a multi-process extraction (torchrun); read
                                together with index.jsonl and merged into it when the extraction ends
    feats/<hh>/<hash>.npy       float16 (layers, frames, dim), read with np.load(mmap_mode="r")
    pooled/<hh>/<hash>.npy      float32 (layers, 2*dim): mean then std over frames, per layer
    errors.json                 the files the last run could not use, and why

Utterances are keyed by the audio's content hash (:func:`serkit.audio.content_hash`): a changed file is
recomputed, an unchanged one never is. A store folder holds one encoder/revision/mode/layers/precision combination;
opening it for another raises :class:`StaleStoreError`. Files are written to a temporary name and moved into place
(``os.replace``) before the index line is appended, so a killed run resumes where it stopped.

Writers hold the store's lock (:mod:`serkit.features.locking`) for index appends, the spec check and the clean-up.
Temporaries carry their writer's pid and are removed only when that process is gone; a torn last index line (a
killed writer, a full disk) is cut off before the next entry is appended. Readers take no lock: an entry appears
only once its files are in place. Filling a store from a manifest is :mod:`serkit.features.extraction`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serkit.config_defaults import UNRECORDED_PRECISION
from serkit.errors import SerkitError
from serkit.features.locking import store_lock
from serkit.features.pooling import pooled_statistics
from serkit.io import atomic_write, naming, remove_stale_temporaries

#: Version of the features a store holds. 2: Whisper features no longer depend on batch neighbours (the front end
#: and attention run per item at its own length), so stores filled by version 1 hold slightly other numbers than
#: a fresh extraction; a store of an older version is refilled (see :meth:`FeatureStore.create`), never mixed.
STORE_VERSION = 2
STORE_FILE = "store.json"
INDEX_FILE = "index.jsonl"
#: Index shard of one rank of a multi-process extraction (merged into INDEX_FILE at its end).
INDEX_SHARD = "index.rank{rank}.jsonl"
ERRORS_FILE = "errors.json"
#: Index entries between fsyncs of the index file.
FSYNC_EVERY = 64
#: Fields of store.json that must match for a store to be reused.
IDENTITY_FIELDS = (
    "version",
    "encoder",
    "revision",
    "mode",
    "layers",
    "sample_rate",
    "dtype",
    "chunk_seconds",
    "overlap_seconds",
    "precision",
)


class NonFiniteFeatures(SerkitError):
    """Features holding NaN or inf (or values float16 cannot hold): never written to a store."""


class StaleStoreError(SerkitError):
    """A store folder that holds features of another encoder, revision, mode or layer set."""


def store_key(spec: dict) -> str:
    """Short hash of the identity fields of a store spec.

    ``precision`` enters the hash only when it is not fp32, so fp32 stores keep the key they had before precisions
    were recorded (a store.json without ``precision`` holds fp32 features).
    """
    ident = {k: spec.get(k) for k in IDENTITY_FIELDS}
    if ident["precision"] in (None, "fp32"):
        del ident["precision"]
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _atomic_write_bytes(path: Path, write) -> None:
    atomic_write(path, write, fsync=False)  # the index line written after the rename marks the entry done


def _cut_torn_tail(fh) -> None:
    """Truncate a binary append-mode index file after its last newline, if its last line is unfinished."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    pos = end
    while pos > 0:  # scan back for the previous newline
        step = min(pos, 1 << 16)
        pos -= step
        fh.seek(pos)
        nl = fh.read(step).rfind(b"\n")
        if nl >= 0:
            fh.truncate(pos + nl + 1)
            return
    fh.truncate(0)


class FeatureStore:
    """Read (and, through :meth:`create`, write) a feature store folder.

    ``FeatureStore(root)`` opens an existing store; raises :class:`FileNotFoundError` naming the folder if it has
    no ``store.json``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        spec_path = self.root / STORE_FILE
        if not spec_path.exists():
            raise FileNotFoundError(
                f"{self.root}: not a feature store (no {STORE_FILE}); run `serkit extract` first"
            )
        self.spec: dict = json.loads(spec_path.read_text())
        self._entries: dict[str, dict] = {}
        self._index_name = INDEX_FILE
        self._read_index()

    # creation --------------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, spec: dict, *, overwrite: bool = False, clean: bool = True) -> FeatureStore:
        """Open ``root`` for writing features described by ``spec``; create it when new.

        Raises :class:`StaleStoreError` when ``root`` holds a store with other identity fields (encoder, revision,
        mode, layers, ...), unless ``overwrite`` (then its entries are dropped). ``clean`` removes temporary files
        of killed writers (those whose pid is gone). Runs under the store's lock.
        """
        root = Path(root)
        spec = {**spec, "version": STORE_VERSION}
        spec["key"] = store_key(spec)
        with store_lock(root):
            return cls._create_locked(root, spec, overwrite, clean)

    @classmethod
    def _create_locked(cls, root: Path, spec: dict, overwrite: bool, clean: bool) -> FeatureStore:
        spec_path = root / STORE_FILE
        if spec_path.exists():
            old = json.loads(spec_path.read_text())
            outdated = old.get("version", 1) != spec["version"] and all(
                old.get(k) == spec.get(k) for k in IDENTITY_FIELDS if k not in ("version", "precision"))
            if outdated and not overwrite:
                print(f"{root}: store filled by feature version {old.get('version', 1)}, this serkit writes version "
                      f"{spec['version']}; re-extracting", file=sys.stderr)
                overwrite = True
            if old.get("key") != spec["key"] and not overwrite:
                diff = {k: (old.get(k), spec.get(k)) for k in IDENTITY_FIELDS if old.get(k) != spec.get(k)}
                raise StaleStoreError(
                    f"{root}: store holds other features; differing fields (stored, requested): {diff}. "
                    f"Use another output folder or overwrite=True (--overwrite)"
                )
            if old.get("key") != spec["key"]:  # overwrite: drop every entry of the old store
                (root / INDEX_FILE).unlink(missing_ok=True)
                for shard in root.glob(INDEX_SHARD.format(rank="*")):
                    shard.unlink()
                for sub in ("feats", "pooled"):
                    shutil.rmtree(root / sub, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        if not spec_path.exists() or json.loads(spec_path.read_text()).get("key") != spec["key"]:
            _atomic_write_bytes(spec_path, lambda fh: fh.write(json.dumps(spec, indent=2).encode()))
        if clean:  # leftovers of killed writers; live writers' temporaries are theirs
            remove_stale_temporaries(root)
        return cls(root)

    def lock(self):
        """The store's exclusive writers' lock, as a context manager (see :func:`store_lock`)."""
        return store_lock(self.root)

    # index -----------------------------------------------------------------------------------------------------
    def _index_files(self) -> list[Path]:
        shards = sorted(self.root.glob(INDEX_SHARD.format(rank="*")))
        return [p for p in (self.root / INDEX_FILE, *shards) if p.exists()]

    def _read_index(self) -> None:
        self._entries = {}
        for path in self._index_files():  # index.jsonl, then the shards of an unfinished multi-process run
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line from a killed run
                        continue
                    self._entries[str(entry["id"])] = entry

    def write_to_shard(self, rank: int) -> None:
        """Append this process's index entries to rank ``rank``'s shard (a multi-process extraction, where each
        rank owns one index file; feature files are named by content hash and written atomically)."""
        self._index_name = INDEX_SHARD.format(rank=rank)

    def merge_shards(self) -> int:
        """Fold the ranks' index shards into ``index.jsonl`` (one process, once every rank is done); returns the
        number of entries moved. A crash half-way leaves duplicate lines, which read the same."""
        shards = [p for p in self._index_files() if p.name != INDEX_FILE]
        lines = [line for p in shards for line in p.read_text(encoding="utf-8").splitlines(keepends=True)
                 if line.endswith("\n")]
        if lines:
            with self.lock(), open(self.root / INDEX_FILE, "a+b") as fh:
                _cut_torn_tail(fh)
                fh.write("".join(lines).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        for p in shards:
            p.unlink()
        self._read_index()
        return len(lines)

    def _append_index(self, entries: Sequence[dict]) -> None:
        # Each line is appended and flushed under the store lock, so a killed process loses at most the entry
        # being written (files are renamed into place before their entry), and a torn last line is cut off
        # before it can swallow the next entry. fsync (power-loss durability) costs milliseconds per call on
        # virtual disks, so it runs every FSYNC_EVERY entries instead of per file.
        index = self.root / self._index_name
        with self.lock(), open(index, "a+b") as fh:
            _cut_torn_tail(fh)
            try:
                fh.write("".join(json.dumps(e) + "\n" for e in entries).encode("utf-8"))
                fh.flush()
            except OSError as exc:  # a full disk: name the index (the torn line is cut off on the next append)
                raise naming(exc, index) from None
            self._unsynced = getattr(self, "_unsynced", 0) + len(entries)
            if self._unsynced >= FSYNC_EVERY:
                os.fsync(fh.fileno())
                self._unsynced = 0
        for e in entries:
            self._entries[str(e["id"])] = e

    def _feat_path(self, h: str) -> Path:
        return self.root / "feats" / h[:2] / f"{h}.npy"

    def _pooled_path(self, h: str) -> Path:
        return self.root / "pooled" / h[:2] / f"{h}.npy"

    # reading ---------------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Encoder hidden-state indices stored, in order (axis 0 of :meth:`load`)."""
        return list(self.spec["layers"])

    @property
    def frame_rate(self) -> float:
        return float(self.spec["frame_rate"])

    @property
    def hidden_size(self) -> int:
        return int(self.spec["hidden_size"])

    @property
    def mode(self) -> str:
        return str(self.spec["mode"])

    @property
    def precision(self) -> str:
        """Precision the encoder ran in (``fp32`` / ``bf16``); stores from before it was recorded are fp32."""
        return str(self.spec.get("precision", UNRECORDED_PRECISION["features"]))

    def ids(self) -> list[str]:
        """Utterance ids with finished features (in the order they were written)."""
        return list(self._entries)

    def __contains__(self, utt_id: object) -> bool:
        return str(utt_id) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, utt_id: str) -> dict:
        """Index entry ``{"id", "hash", "frames", "seconds"}``; KeyError naming the id and the store if absent."""
        try:
            return self._entries[str(utt_id)]
        except KeyError:
            raise KeyError(f"{self.root}: no features for id {utt_id!r} ({len(self)} ids stored)") from None

    def is_current(self, utt_id: str, audio_hash: str) -> bool:
        """True when ``utt_id`` is stored for audio with content hash ``audio_hash`` and its files exist."""
        e = self._entries.get(str(utt_id))
        return (
            e is not None
            and e["hash"] == audio_hash
            and self._feat_path(audio_hash).exists()
            and self._pooled_path(audio_hash).exists()
        )

    def load(self, utt_id: str) -> np.ndarray:
        """Frame features float16 ``(layers, frames, dim)``, memory-mapped (read-only)."""
        return np.load(self._feat_path(self.entry(utt_id)["hash"]), mmap_mode="r")

    def pooled(self, utt_id: str) -> np.ndarray:
        """Pooled statistics float32 ``(layers, 2*dim)``: mean over frames, then standard deviation."""
        return np.load(self._pooled_path(self.entry(utt_id)["hash"]))

    def pooled_matrix(self, ids: Sequence[str], layer: int = -1) -> np.ndarray:
        """Pooled statistics of one stored layer for many ids: ``(len(ids), 2*dim)`` float32."""
        return np.stack([self.pooled(i)[layer] for i in ids])

    def disk_bytes(self) -> int:
        """Bytes used by the store folder."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def verify(self, manifest: pd.DataFrame) -> list[str]:
        """Ids of ``manifest`` whose audio changed since extraction or that are missing (re-hashes the audio)."""
        from serkit.audio import content_hash

        stale = []
        for utt_id, path in zip(manifest["id"].astype(str), manifest["path"], strict=True):
            try:
                ok = self.is_current(utt_id, content_hash(path))
            except OSError:
                ok = False
            if not ok:
                stale.append(utt_id)
        return stale

    # writing ---------------------------------------------------------------------------------------------------
    def write(self, utt_id: str, audio_hash: str, feats: torch.Tensor | np.ndarray, seconds: float) -> None:
        """Store float32 ``feats`` ``(layers, frames, dim)`` for ``utt_id``: float16 frames + float32 statistics.

        Raises :class:`NonFiniteFeatures` (nothing written) when a frame or statistic is NaN or inf."""
        feats = torch.as_tensor(feats, dtype=torch.float32)
        if feats.ndim != 3 or feats.shape[0] != len(self.layers) or feats.shape[1] < 1:
            raise ValueError(
                f"{utt_id}: features must be (layers={len(self.layers)}, frames>=1, dim), got {tuple(feats.shape)}"
            )
        pooled = pooled_statistics(feats).numpy()
        frames = feats.to(torch.float16).numpy()
        bad = int((~np.isfinite(frames)).sum()) or int((~np.isfinite(pooled)).sum())
        if bad:  # a NaN feature would poison every model trained on the store
            raise NonFiniteFeatures(f"{utt_id}: non-finite features: {bad} value(s) are NaN or inf (or beyond "
                                    f"float16's range); not stored")
        _atomic_write_bytes(self._feat_path(audio_hash), lambda fh: np.save(fh, frames))
        _atomic_write_bytes(self._pooled_path(audio_hash), lambda fh: np.save(fh, pooled))
        self._append_index(
            [
                {
                    "id": str(utt_id),
                    "hash": audio_hash,
                    "frames": int(feats.shape[1]),
                    "seconds": round(float(seconds), 4),
                }
            ]
        )

    def link(self, utt_id: str, audio_hash: str, seconds: float) -> None:
        """Point ``utt_id`` at features already stored for the same audio content."""
        frames = int(np.load(self._feat_path(audio_hash), mmap_mode="r").shape[1])
        self._append_index([{"id": str(utt_id), "hash": audio_hash, "frames": frames, "seconds": seconds}])

    def has_hash(self, audio_hash: str) -> bool:
        return self._feat_path(audio_hash).exists() and self._pooled_path(audio_hash).exists()

    def record_failures(self, failures: Sequence[tuple[str, str, str]], looked_at: set[str]) -> None:
        """Rewrite ``errors.json``: ``failures`` (``(id, path, problem)`` of this run) after the earlier entries of
        ids this run did not look at (``looked_at``: the ids of its manifest; another run's ids stay). Under the
        store's lock."""
        with self.lock():
            path = self.root / ERRORS_FILE
            try:
                kept = [e for e in json.loads(path.read_text()) if str(e.get("id")) not in looked_at]
            except (OSError, ValueError, AttributeError):
                kept = []
            entries = kept + [{"id": i, "path": p, "problem": m} for i, p, m in failures]
            _atomic_write_bytes(path, lambda fh: fh.write(json.dumps(entries, indent=1).encode()))

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.root)!r}, encoder={self.spec.get('encoder')!r}, mode={self.mode!r}, "
            f"layers={self.layers}, ids={len(self)})"
        )

