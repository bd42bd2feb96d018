"""Extraction of a manifest's encoder features into a feature store (:mod:`serkit.features.store`), resumable.

One run is a sequence of named steps: prepare the encoder (load, cast to the asked precision), open the store for
the run's spec (under its lock, or rank 0 first in a ``torchrun`` group), plan what is missing (content-hash every
file; reuse or link what is current), read the missing audio (a background thread), run the encoder in batches
(:func:`serkit.encoders.runner.encode_signals`), write frames and pooled statistics per utterance, then combine the
ranks' reports and record the failures in ``errors.json``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from serkit.audio import audio_info, content_hash, read_audio, unusable
from serkit.config_defaults import DEFAULTS
from serkit.constants import SAMPLE_RATE
from serkit.distributed import gather_objects, world
from serkit.encoders import load_encoder, parse_layers, runner
from serkit.errors import AudioError, SerkitError
from serkit.features.locking import store_lock
from serkit.features.store import FeatureStore, NonFiniteFeatures, StaleStoreError
from serkit.precision import precision_of, resolve_precision, torch_dtype

#: One utterance to encode: (id, audio path, content hash, duration in seconds).
PendingItem = tuple[str, str, str, float]
#: Records one unusable file: ``fail(id, path, problem)`` (raises instead in a strict run).
FailureRecorder = Callable[[str, str, str], None]


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


def _record_failure(report: ExtractReport, strict: bool, utt_id: str, path: str, problem: str) -> None:
    """Add ``(id, path, problem)`` to ``report.failures``; a strict run raises :class:`AudioError` instead."""
    if strict:
        raise AudioError(path, problem)
    report.failures.append((utt_id, str(path), problem))


def _as_manifest(manifest: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(manifest, (str, Path)):
        from serkit.manifest import read_manifest

        return read_manifest(manifest)
    missing = [c for c in ("id", "path") if c not in manifest.columns]
    if missing:
        raise SerkitError(f"manifest lacks column(s) {missing}; found {list(manifest.columns)}")
    return manifest


def _durations(df: pd.DataFrame) -> list[float]:
    """Seconds per manifest row: the ``duration`` column where positive, else the file's header (0.0 unreadable)."""
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


def prepare_encoder(encoder, mode: str, device: str, precision: str | None, level_db: float | None = None):
    """The :class:`~serkit.encoders.Encoder` to run: ``encoder`` loaded by name (``precision`` default ``auto``,
    inputs scaled to ``level_db``), or the given object (its own level), cast on a copy when ``precision`` resolves
    to another than its own."""
    if isinstance(encoder, str):
        dtype = torch_dtype(resolve_precision(precision or "auto", device))
        return load_encoder(encoder, mode=mode, device=device, dtype=dtype, level_db=level_db)
    if precision is not None:
        first = next(iter(encoder.parameters()), None)
        wanted = resolve_precision(precision, first.device if first is not None else device)
        if precision_of(encoder) != wanted:
            return copy.deepcopy(encoder).cast(torch_dtype(wanted))
    return encoder


def store_spec(encoder, layer_indices: list[int], layers_spec, chunk_seconds: float, overlap_seconds: float) -> dict:
    """The ``store.json`` content for ``encoder``'s hidden states ``layer_indices`` (chunking in seconds)."""
    return {
        **encoder.describe(),
        "layers": layer_indices,
        "dtype": "float16",
        "chunk_seconds": chunk_seconds,
        "overlap_seconds": overlap_seconds,
        "layers_spec": str(layers_spec),
        "precision": precision_of(encoder),
    }


def open_store_for_run(out_dir: str | Path, spec: dict, overwrite: bool, held: contextlib.ExitStack) -> FeatureStore:
    """Open (create) the store at ``out_dir`` for writing ``spec``.

    One process: takes the store's lock into ``held`` for the whole run (a second extraction waits, then reuses
    everything). A ``torchrun`` group: rank 0 creates (and cleans) the store before the others open it, each rank
    then appends to its own index shard; a refusal (:class:`StaleStoreError`) stops every rank."""
    rank, world_size = world()
    if world_size == 1:
        held.enter_context(store_lock(out_dir))
        return FeatureStore.create(out_dir, spec, overwrite=overwrite)
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
    return store


def plan_missing(store: FeatureStore, df: pd.DataFrame, report: ExtractReport, fail: FailureRecorder
                 ) -> list[PendingItem]:
    """Hash this rank's share of ``df`` (every ``world_size``-th row of the longest-first order) and return what the
    store lacks, longest first; current entries count as reused, content already stored under another id is
    linked. Unreadable files go to ``fail``."""
    rank, world_size = world()
    ids = df["id"].astype(str).tolist()
    paths = df["path"].astype(str).tolist()
    durations = _durations(df)
    if world_size > 1:  # balanced lengths across ranks
        order = sorted(range(len(ids)), key=lambda i: -durations[i])[rank::world_size]
        ids, paths, durations = ([xs[i] for i in order] for xs in (ids, paths, durations))
    todo: list[PendingItem] = []
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
    return todo


def _read_pending(item: PendingItem) -> tuple[PendingItem, np.ndarray | None, str | None]:
    """``(item, signal float32 (samples,) at 16 kHz or None, problem or None)``; never raises."""
    try:
        signal = read_audio(item[1])
        return item, signal, unusable(signal)  # what `serkit check` calls fatal is skipped, same reason
    except AudioError as exc:
        return item, None, exc.problem
    except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
        return item, None, f"{type(exc).__name__}: {exc}"


def load_audio(todo: Sequence[PendingItem], encoder, read_workers: int, fail: FailureRecorder, bar,
               read_items: dict[str, tuple[str, float, str]]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(id, signal (samples,))`` of the usable files of ``todo``, read in ``read_workers`` background
    threads; a file the encoder would give no frame goes to ``fail``. ``read_items`` gets ``id -> (hash, seconds,
    path)`` of each yielded one."""
    with ThreadPoolExecutor(max_workers=max(1, read_workers)) as pool:
        for (utt_id, path, h, _), signal, problem in pool.map(_read_pending, todo, chunksize=1):
            if problem is None:
                frames = int(encoder.num_frames(torch.tensor([len(signal)]))[0])
                if frames < 1:
                    problem = f"too short: {len(signal)} samples give no {encoder.name} frame"
            if problem is not None:
                fail(utt_id, path, problem)
                bar.update(1)
                continue
            read_items[utt_id] = (h, len(signal) / SAMPLE_RATE, path)
            yield utt_id, signal


def encode_and_write(store: FeatureStore, encoder, signals: Iterator[tuple[str, np.ndarray]],
                     layer_indices: list[int], read_items: dict[str, tuple[str, float, str]], report: ExtractReport,
                     fail: FailureRecorder, bar, **batching) -> None:
    """Run ``encoder`` over ``signals`` (``batching``: ``batch_seconds``, ``chunk_seconds``, ``overlap_seconds``)
    and store each utterance's ``(layers, frames, dim)`` features; non-finite output goes to ``fail``."""
    for utt_id, feats in runner.encode_signals(encoder, signals, layer_indices, **batching):
        h, seconds, path = read_items.pop(utt_id)
        try:
            store.write(utt_id, h, feats, seconds)
        except NonFiniteFeatures as exc:
            fail(utt_id, path, str(exc).partition(": ")[2])
            bar.update(1)
            continue
        report.computed += 1
        report.audio_seconds += seconds
        bar.update(1)


def combine_rank_reports(report: ExtractReport, total: int, start: float) -> None:
    """Sum the reports of every rank of a ``torchrun`` group into ``report`` (each rank gets the whole run's)."""
    report.total = total
    report.wall_seconds = time.perf_counter() - start
    parts = gather_objects(report)
    report.computed = sum(r.computed for r in parts)
    report.reused = sum(r.reused for r in parts)
    report.failures = [f for r in parts for f in r.failures]
    report.audio_seconds = sum(r.audio_seconds for r in parts)


def finish_run(store: FeatureStore, report: ExtractReport, df: pd.DataFrame, start: float, progress: bool) -> None:
    """Combine the ranks' reports, merge their index shards and write ``errors.json`` (rank 0; failures of ids
    this run did not look at stay), then fill in wall time and disk use and print the summary."""
    rank, world_size = world()
    if world_size > 1:
        combine_rank_reports(report, len(df), start)
        if rank == 0:
            store.merge_shards()
    if rank == 0:
        store.record_failures(report.failures, set(df["id"].astype(str)))
    gather_objects(None)  # every rank sees the merged store from here on
    report.wall_seconds = time.perf_counter() - start
    report.disk_bytes = store.disk_bytes()
    if progress and rank == 0:
        print(report.summary() + (f" ({world_size} processes)" if world_size > 1 else ""))
        for utt_id, path, problem in report.failures[:20]:
            print(f"  skipped {utt_id}: {path}: {problem}")


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
    level_db: float | None = None,
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
        level_db: for an encoder name, the active-speech level (dBFS) every input is scaled to
            (:mod:`serkit.level`; recorded in ``store.json``, part of the store's identity); None: as read.
        batch_seconds: padded audio per batch; chunk_seconds / overlap_seconds: chunking of long files.
        strict: raise on the first unusable audio file instead of reporting and skipping it.
        overwrite: reuse a folder that holds another store (its index is dropped).
        progress: show a tqdm bar and print a summary.
    Returns an :class:`ExtractReport`; the failures are also written to ``errors.json``.
    """
    start = time.perf_counter()
    df = _as_manifest(manifest)
    encoder = prepare_encoder(encoder, mode, device, precision, level_db)
    indices, _ = parse_layers(layers, encoder.num_layers)
    spec = store_spec(encoder, indices, layers, chunk_seconds, overlap_seconds)
    with contextlib.ExitStack() as held:
        store = open_store_for_run(out_dir, spec, overwrite, held)
        report = ExtractReport(store=store.root, total=len(df))
        fail = functools.partial(_record_failure, report, strict)
        todo = plan_missing(store, df, report, fail)
        bar = tqdm(total=len(todo), desc=f"extract {encoder.name}", unit="utt", disable=not progress)
        read_items: dict[str, tuple[str, float, str]] = {}
        signals = load_audio(todo, encoder, read_workers, fail, bar, read_items)
        encode_and_write(store, encoder, signals, indices, read_items, report, fail, bar, batch_seconds=batch_seconds,
                         chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
        bar.close()
        finish_run(store, report, df, start, progress)
        return report


def encoder_options(enc: dict) -> dict:
    """A config's ``encoder`` section (or a view's) with every key it leaves out at its one default."""
    return {**DEFAULTS["encoder"], **enc}


def feature_precision(enc: dict) -> str:
    """The resolved precision (``fp32`` / ``bf16``) the config's encoder runs in for extraction."""
    from serkit.precision import resolve_precision

    enc = encoder_options(enc)
    return resolve_precision(enc["precision"], _device(enc["device"]))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def extraction_options(enc: dict) -> dict:
    """Keyword arguments of :func:`~serkit.features.extraction.extract_to_cache` from a config's ``encoder`` section."""
    enc = encoder_options(enc)
    return {"mode": enc["mode"], "device": _device(enc["device"]), "precision": feature_precision(enc),
            "batch_seconds": float(enc["batch_seconds"]), "level_db": enc["level_db"]}
