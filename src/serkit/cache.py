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
recomputed, an unchanged one never is. A store folder holds one encoder/revision/mode/layers/precision combination; opening
it for another raises :class:`StaleStoreError`. Files are written to a temporary name and moved into place
(``os.replace``) before the index line is appended, so a killed run resumes where it stopped.

Several processes may write one store (two ``serkit cv`` runs of one corpus and encoder share it):
:func:`store_lock` (``FeatureStore.lock()``) is an exclusive per-store lock (``.lock``, ``fcntl.flock``).
:func:`extract_to_cache` holds it for the whole run, so a second extraction waits and then finds everything
cached; the ranks of one ``torchrun`` extraction split the ids among themselves instead and lock only their index
appends, the spec check and the clean-up. Temporaries carry their writer's pid and are removed only when that
process is gone; a torn last index line (a killed writer, a full disk) is cut off before the next entry is
appended. Readers take no lock: an entry appears only once its files are in place.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from serkit.constants import SAMPLE_RATE
from serkit.errors import AudioError, SerkitError
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
LOCK_FILE = ".lock"
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


# --------------------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------------------
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


#: per process: resolved store folder -> [open lock file, nesting depth]
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def store_lock(root: str | Path, log=None):
    """Hold the exclusive writers' lock of the store folder ``root`` (created if needed) for the block.

    ``fcntl.flock`` on ``root/.lock``: another process blocks until it is free (printing once who holds it, via
    ``log``, default stderr); the kernel releases it when the holder dies, even by SIGKILL. Re-entrant within a
    process (nested blocks share one lock). Local file systems only (NFS locks depend on the server).
    """
    key = str(Path(root).resolve())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        Path(key).mkdir(parents=True, exist_ok=True)
        fh = open(Path(key) / LOCK_FILE, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            (log or (lambda m: print(m, file=sys.stderr)))(
                f"{key}: waiting for another writer of this feature store (pid {holder})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        held = [fh, 1]
        with _HELD_GUARD:
            _HELD[key] = held
    try:
        yield
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            held[0].close()


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


def pooled_statistics(feats: torch.Tensor) -> torch.Tensor:
    """Per-layer mean then standard deviation over frames: ``(layers, frames, dim)`` -> ``(layers, 2*dim)``."""
    # two passes (mean, then mean squared deviation): as exact as std_mean, ~3x faster on a (layers, T, dim) slab
    mean = feats.mean(dim=1, keepdim=True)
    dev = feats - mean
    std = (dev * dev).mean(dim=1).sqrt()
    return torch.cat([mean[:, 0], std], dim=-1)


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
        return str(self.spec.get("precision", "fp32"))

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

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.root)!r}, encoder={self.spec.get('encoder')!r}, mode={self.mode!r}, "
            f"layers={self.layers}, ids={len(self)})"
        )


# --------------------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ExtractReport:
    """What :func:`extract_to_cache` did. ``failures``: ``(id, path, problem)`` per unusable file."""

    store: Path
    total: int = 0
    computed: int = 0
    reused: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    disk_bytes: int = 0

    @property
    def real_time_factor(self) -> float:
        """Wall time per second of audio computed (lower is faster)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def summary(self) -> str:
        return (
            f"{self.store}: {self.computed} computed, {self.reused} already cached, {len(self.failures)} failed "
            f"of {self.total}; {self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s "
            f"(RTF {self.real_time_factor:.4f}); store uses {self.disk_bytes / 2**20:.1f} MiB"
        )


def _as_manifest(manifest: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(manifest, (str, Path)):
        from serkit.manifest import read_manifest

        return read_manifest(manifest)
    missing = [c for c in ("id", "path") if c not in manifest.columns]
    if missing:
        raise SerkitError(f"manifest lacks column(s) {missing}; found {list(manifest.columns)}")
    return manifest


def _durations(df: pd.DataFrame) -> list[float]:
    from serkit.audio import audio_info

    out = []
    given = df["duration"] if "duration" in df.columns else [None] * len(df)
    for path, d in zip(df["path"], given, strict=True):
        if d is not None and pd.notna(d) and float(d) > 0:
            out.append(float(d))
            continue
        try:
            out.append(float(audio_info(path)["duration"]))
        except AudioError:
            out.append(0.0)
    return out


def extract_to_cache(
    manifest: pd.DataFrame | str | Path,
    encoder,
    layers: str | int | Sequence[int] = "all",
    out_dir: str | Path = "features",
    *,
    mode: str = "native",
    device: str = "cpu",
    precision: str | None = None,
    batch_seconds: float = 120.0,
    chunk_seconds: float = 30.0,
    overlap_seconds: float = 1.0,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    read_workers: int = 1,
) -> ExtractReport:
    """Extract encoder features for every manifest row into the store at ``out_dir``; resumable.

    In a ``torch.distributed`` process group (``torchrun``, see :mod:`serkit.distributed`) each rank takes every
    ``world_size``-th utterance of the longest-first order, writes its feature files (content-hash names, atomic)
    and its own index shard into the same store, and resumes its share after a kill (with any number of ranks:
    what any rank finished is reused); rank 0 then merges the shards and writes ``errors.json``. Every rank returns
    the report of the whole run.

    Args:
        manifest: DataFrame (or CSV/Parquet path) with at least ``id`` and ``path``; ``duration`` (s) orders
            the work longest first when present.
        encoder: an encoder name for :func:`~serkit.encoders.load_encoder` (alias, hub id, folder, ``fbank-80``) or
            an already built :class:`~serkit.encoders.Encoder` (its own mode and device are used).
        layers: layer spec (see :mod:`serkit.encoders.featurizer`; ``"weighted"`` stores the same as ``"all"``).
        mode: ``"native"`` or ``"padded"`` (Whisper); recorded in ``store.json``.
        device: ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` / ``"fp32"`` / ``"bf16"`` (:mod:`serkit.precision`; the encoder's weights are cast
            once). Default: ``auto`` for an encoder name, the given encoder's own precision for an object (a copy is
            cast when another is asked for). The resolved value is recorded in ``store.json`` and is part of the
            store's identity.
        batch_seconds: padded audio per batch; chunk_seconds / overlap_seconds: chunking of long files.
        strict: raise on the first unusable audio file instead of reporting and skipping it.
        overwrite: reuse a folder that holds another store (its index is dropped).
        progress: show a tqdm bar and print a summary.
    Returns an :class:`ExtractReport`; the failures are also written to ``errors.json``.
    """
    from tqdm.auto import tqdm

    from serkit.audio import content_hash, read_audio, unusable
    from serkit.distributed import gather_objects, world
    from serkit.encoders import load_encoder, parse_layers
    from serkit.precision import precision_of, resolve_precision, torch_dtype

    start = time.perf_counter()
    df = _as_manifest(manifest)
    if isinstance(encoder, str):
        dtype = torch_dtype(resolve_precision(precision or "auto", device))
        encoder = load_encoder(encoder, mode=mode, device=device, dtype=dtype)
    elif precision is not None:
        first = next(iter(encoder.parameters()), None)
        wanted = resolve_precision(precision, first.device if first is not None else device)
        if precision_of(encoder) != wanted:
            encoder = copy.deepcopy(encoder).cast(torch_dtype(wanted))
    indices, _ = parse_layers(layers, encoder.num_layers)
    spec = {
        **encoder.describe(),
        "layers": indices,
        "dtype": "float16",
        "chunk_seconds": chunk_seconds,
        "overlap_seconds": overlap_seconds,
        "layers_spec": str(layers),
        "precision": precision_of(encoder),
    }
    rank, world_size = world()
    with contextlib.ExitStack() as held:
        if world_size == 1:  # one extraction at a time per store: a second one waits, then reuses everything
            held.enter_context(store_lock(out_dir))
            store = FeatureStore.create(out_dir, spec, overwrite=overwrite)
        else:  # rank 0 creates (and cleans) the store before the others open it; a refusal stops every rank
            problem = None
            if rank == 0:
                try:
                    FeatureStore.create(out_dir, spec, overwrite=overwrite)
                except SerkitError as exc:
                    problem = exc
            refused = gather_objects(None if problem is None else str(problem))[0]
            if refused is not None:
                raise problem if problem is not None else StaleStoreError(refused)
            store = FeatureStore.create(out_dir, spec, clean=False)
            store.write_to_shard(rank)
        report = ExtractReport(store=store.root, total=len(df))

        def fail(utt_id: str, path: str, problem: str) -> None:
            if strict:
                raise AudioError(path, problem)
            report.failures.append((utt_id, str(path), problem))

        # 1. hash the audio; keep what is current
        ids = df["id"].astype(str).tolist()
        paths = df["path"].astype(str).tolist()
        durations = _durations(df)
        if world_size > 1:  # this rank's share: every world_size-th of the longest-first order (balanced lengths)
            order = sorted(range(len(ids)), key=lambda i: -durations[i])[rank::world_size]
            ids, paths, durations = ([xs[i] for i in order] for xs in (ids, paths, durations))
        todo: list[tuple[str, str, str, float]] = []
        for utt_id, path, dur in zip(ids, paths, durations, strict=True):
            try:
                h = content_hash(path)
            except FileNotFoundError:
                fail(utt_id, path, "file not found")
                continue
            except OSError as exc:
                fail(utt_id, path, f"cannot read: {exc.strerror or exc}")
                continue
            except AudioError as exc:  # a FIFO or device: never opened
                fail(utt_id, path, exc.problem)
                continue
            if store.is_current(utt_id, h):
                report.reused += 1
            elif store.has_hash(h):
                store.link(utt_id, h, dur)
                report.reused += 1
            else:
                todo.append((utt_id, path, h, dur))
        todo.sort(key=lambda t: -t[3])  # longest first: similar lengths batch together, peak memory shows early

        # 2. read (in a background thread) and encode in batches
        bar = tqdm(total=len(todo), desc=f"extract {encoder.name}", unit="utt", disable=not progress)
        meta = {}

        def load(item):
            path = item[1]
            try:
                signal = read_audio(path)
                return item, signal, unusable(signal)  # what `serkit check` calls fatal is skipped, same reason
            except AudioError as exc:
                return item, None, exc.problem
            except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
                return item, None, f"{type(exc).__name__}: {exc}"

        def signals() -> Iterator[tuple[str, np.ndarray]]:
            with ThreadPoolExecutor(max_workers=max(1, read_workers)) as pool:
                for (utt_id, path, h, _), signal, problem in pool.map(load, todo, chunksize=1):
                    if problem is None:
                        frames = int(encoder.num_frames(torch.tensor([len(signal)]))[0])
                        if frames < 1:
                            problem = f"too short: {len(signal)} samples give no {encoder.name} frame"
                    if problem is not None:
                        fail(utt_id, path, problem)
                        bar.update(1)
                        continue
                    meta[utt_id] = (h, len(signal) / SAMPLE_RATE, path)
                    yield utt_id, signal

        from serkit.encoders.runner import encode_signals

        for utt_id, feats in encode_signals(
            encoder,
            signals(),
            indices,
            batch_seconds=batch_seconds,
            chunk_seconds=chunk_seconds,
            overlap_seconds=overlap_seconds,
        ):
            h, seconds, path = meta.pop(utt_id)
            try:
                store.write(utt_id, h, feats, seconds)
            except NonFiniteFeatures as exc:
                fail(utt_id, path, str(exc).partition(": ")[2])
                bar.update(1)
                continue
            report.computed += 1
            report.audio_seconds += seconds
            bar.update(1)
        bar.close()

        if world_size > 1:  # the whole run's report on every rank; rank 0 folds the shards into index.jsonl
            report.total = len(df)
            report.wall_seconds = time.perf_counter() - start
            parts = gather_objects(report)
            report.computed = sum(r.computed for r in parts)
            report.reused = sum(r.reused for r in parts)
            report.failures = [f for r in parts for f in r.failures]
            report.audio_seconds = sum(r.audio_seconds for r in parts)
            if rank == 0:
                store.merge_shards()
        if rank == 0:  # this run's failures, plus earlier ones of ids this run did not look at (another run's)
            with store.lock():
                path, seen = store.root / ERRORS_FILE, set(df["id"].astype(str))
                try:
                    kept = [e for e in json.loads(path.read_text()) if str(e.get("id")) not in seen]
                except (OSError, ValueError, AttributeError):
                    kept = []
                failures = kept + [{"id": i, "path": p, "problem": m} for i, p, m in report.failures]
                _atomic_write_bytes(path, lambda fh: fh.write(json.dumps(failures, indent=1).encode()))
        gather_objects(None)  # every rank sees the merged store from here on
        report.wall_seconds = time.perf_counter() - start
        report.disk_bytes = store.disk_bytes()
        if progress and rank == 0:
            print(report.summary() + (f" ({world_size} processes)" if world_size > 1 else ""))
            for utt_id, path, problem in report.failures[:20]:
                print(f"  skipped {utt_id}: {path}: {problem}")
        return report


# --------------------------------------------------------------------------------------------------------------
# training input
# --------------------------------------------------------------------------------------------------------------
class CachedFeatureDataset(torch.utils.data.Dataset):
    """Cached frame features plus labels for the rows of ``manifest``.

    Items: ``{"id": str, "features": float32 (layers, frames, dim), "length": frames, <label column>: value}``.
    String label columns are mapped to class indices (``self.classes[column]``, sorted unless ``classes`` is
    given); numeric ones are returned as floats. ``layers`` picks stored layers (positions in ``store.layers``).
    Raises KeyError naming the missing ids when the store lacks some rows (``missing="skip"`` drops them).
    """

    def __init__(
        self,
        store: FeatureStore | str | Path,
        manifest: pd.DataFrame,
        label_columns: Sequence[str] = ("emotion",),
        *,
        layers: Sequence[int] | None = None,
        classes: dict[str, list] | None = None,
        missing: str = "raise",
    ):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        df = manifest.copy()
        df["id"] = df["id"].astype(str)
        absent = [i for i in df["id"] if i not in self.store]
        if absent and missing == "raise":
            raise KeyError(f"{self.store.root}: no features for {len(absent)} id(s), e.g. {absent[:5]}")
        df = df[~df["id"].isin(absent)].reset_index(drop=True)
        self.df = df
        self.label_columns = list(label_columns)
        self.layers = None if layers is None else list(layers)
        self.classes: dict[str, list] = {}
        for col in self.label_columns:
            if col not in df.columns:
                raise KeyError(f"label column {col!r} not in manifest; columns: {list(df.columns)}")
            if not pd.api.types.is_numeric_dtype(df[col]):
                self.classes[col] = (
                    list(classes[col]) if classes and col in classes else sorted(df[col].unique())
                )
        self._index = {col: {c: k for k, c in enumerate(cl)} for col, cl in self.classes.items()}

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int) -> dict:
        row = self.df.iloc[i]
        feats = self.store.load(row["id"])
        if self.layers is not None:
            feats = feats[self.layers]
        x = torch.from_numpy(np.asarray(feats, dtype=np.float32))
        item = {"id": row["id"], "features": x, "length": x.shape[1]}
        for col in self.label_columns:
            if col in self._index:
                if row[col] not in self._index[col]:
                    raise KeyError(f"id {row['id']}: {col}={row[col]!r} not in classes {self.classes[col]}")
                item[col] = self._index[col][row[col]]
            else:
                item[col] = float(row[col])
        return item


def collate_features(batch: Sequence[dict]) -> dict:
    """Pad items of :class:`CachedFeatureDataset` to the batch's longest.

    Returns ``{"ids": list, "features": (batch, layers, frames, dim) float32, "frame_mask": bool (batch, frames),
    "lengths": long (batch,), <label>: long (class indices) or float tensor (batch,)}``.
    """
    lengths = torch.tensor([b["length"] for b in batch], dtype=torch.long)
    n_layers, _, dim = batch[0]["features"].shape
    feats = torch.zeros(len(batch), n_layers, int(lengths.max()), dim)
    for j, b in enumerate(batch):
        feats[j, :, : b["length"]] = b["features"]
    out = {
        "ids": [b["id"] for b in batch],
        "features": feats,
        "frame_mask": torch.arange(feats.shape[2])[None, :] < lengths[:, None],
        "lengths": lengths,
    }
    for key in batch[0]:
        if key in ("id", "features", "length"):
            continue
        values = [b[key] for b in batch]
        dtype = torch.long if all(isinstance(v, int) for v in values) else torch.float32
        out[key] = torch.tensor(values, dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------
def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serkit extract MANIFEST --encoder ID --layers SPEC --out DIR ...`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "extract",
        help="extract encoder features of a manifest into a feature store",
        description=extract_to_cache.__doc__.split("\n")[0],
    )
    p.add_argument("manifest", help="manifest CSV or Parquet (columns id, path, ...)")
    p.add_argument(
        "--encoder", required=True, help="alias (whisper-base, wavlm-large, fbank-80, ...), hub id or folder"
    )
    p.add_argument("--layers", default="all", help="layer spec: -1, 3, 0,2,4, 2:5, all (default: all)")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument(
        "--mode",
        choices=("native", "padded"),
        default="native",
        help="native: own length (default); padded: Whisper's stock 30 s input",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="encoder precision (default auto: bf16 where the CPU has AMX / AVX512-bf16 or the GPU supports it)",
    )
    p.add_argument("--batch-seconds", type=float, default=120.0, help="padded audio per batch, seconds")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="longer files are chunked")
    p.add_argument("--overlap-seconds", type=float, default=1.0, help="overlap between chunks")
    p.add_argument("--strict", action="store_true", help="stop at the first bad audio file")
    p.add_argument(
        "--overwrite", action="store_true", help="reuse a folder holding features of another encoder"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=extract_main)
    return p


def extract_main(args: argparse.Namespace) -> int:
    """Run ``serkit extract`` from parsed arguments; exit code 0, or 1 when some files failed.

    Under ``torchrun`` the ranks split the manifest (gloo on CPU, nccl on GPU: ``--device cuda`` gives rank r
    ``cuda:LOCAL_RANK``)."""
    from serkit.distributed import barrier, init_from_env, shutdown

    rank, _, device = init_from_env(args.device)
    try:
        report = _extract(args, device)
        barrier()  # torchrun stops the other ranks as soon as one exits non-zero: finish together
    finally:
        shutdown()
    return 1 if report.failures and rank == 0 else 0  # rank 0 reports the whole run's failures


def _extract(args: argparse.Namespace, device: str) -> ExtractReport:
    return extract_to_cache(
        args.manifest,
        args.encoder,
        args.layers,
        args.out,
        mode=args.mode,
        device=device,
        precision=args.precision,
        batch_seconds=args.batch_seconds,
        chunk_seconds=args.chunk_seconds,
        overlap_seconds=args.overlap_seconds,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
