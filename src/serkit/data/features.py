"""Datasets that serve cached encoder features (with frame masks) or waveforms to training.

Items are dicts of numpy arrays; :func:`collate` pads frames to the batch's longest item and adds
``frame_mask`` (batch, frames) bool. Features are ``(layers, frames, dim)`` float16 in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from serkit.data.labels import LabelMap


class _LabelledUtterances(Dataset):
    """What every training dataset shares: the manifest rows of ``ids``, their encoded labels, an epoch counter
    (Lightning calls :meth:`set_epoch`; random crops draw from ``(epoch, index)``) and an in-memory cache of what
    :meth:`_read` returns (filled up front when ``preload``)."""

    def __init__(self, manifest: pd.DataFrame, ids: Sequence[str], labels: LabelMap, train: bool, preload: bool):
        self.ids = [str(i) for i in ids]
        self.rows = manifest.set_index("id").loc[self.ids].reset_index()
        self.enc = labels.encode(self.rows)
        self.train, self.epoch = train, 0
        self._cache: dict[int, np.ndarray] = {}
        if preload:
            for i in range(len(self.ids)):
                self._cache[i] = self._read(i)

    def _read(self, i: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def _get(self, i: int) -> np.ndarray:
        x = self._cache.get(i)
        return self._read(i) if x is None else x

    def _item(self, i: int, key: str, value: np.ndarray) -> dict:
        item = {"index": i, key: value}
        for k, v in self.enc.items():
            item[k] = v[i]
        return item

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def lengths(self) -> np.ndarray | None:
        """``(items,)`` frames (or samples) each item has once served, or None when items have no length (pooled
        statistics) or it is not known without reading them; what length-grouped batches sort by."""
        return None


class FeatureDataset(_LabelledUtterances):
    """Utterances of ``ids`` with their cached features and encoded labels.

    ``store`` has ``load(id) -> (layers, frames, dim)`` and ``pooled(id) -> (layers, 2*dim)``. ``level``
    ``"frames"`` serves ``features``; ``"pooled"`` serves ``pooled``. ``preload`` reads everything into memory once
    (float16), which is what makes CPU training fast; ``max_frames`` crops long items (random crop when
    ``train``, centre otherwise). On reading, in this order: ``layers`` selects stored layers (only those are read),
    ``normalizer`` speaker-normalises them with their own statistics, ``frame_norm="layer"`` layer-normalises every
    frame of every layer (no parameters, over ``dim``), ``pool_frames`` averages windows of frames.

    Frames that ``frame_norm`` or ``pool_frames`` processed are kept for the process (:data:`PROCESSED_FRAMES`)
    under everything that determines them (store, id, layers, the speaker's statistics, the two options), so the
    folds and ablation rows of one process share them instead of recomputing them.
    """

    def __init__(self, store, manifest: pd.DataFrame, ids: Sequence[str], labels: LabelMap, level: str = "frames",
                 preload: bool = True, max_frames: int | None = None, train: bool = False,
                 layers: list[int] | None = None, normalizer=None, pool_frames: int = 1, speaker_stats: bool = False,
                 frame_norm: str = "none"):
        self.store, self.level, self.max_frames, self.layers = store, level, max_frames, layers
        if frame_norm not in ("none", "layer"):
            raise ValueError(f"FeatureDataset: frame_norm={frame_norm!r} is not 'none' or 'layer'")
        self.frame_norm = frame_norm
        #: optional :class:`serkit.data.normalize.SpeakerNormalizer`, applied to the stored layers on reading, or
        #: (``speaker_stats``) served with each item as ``speaker_mean`` / ``speaker_std`` ``(layers, dim)`` for a
        #: model that runs encoder blocks on the raw features and normalises their outputs
        self.normalizer, self.speaker_stats = normalizer, bool(speaker_stats) and normalizer is not None
        self.pool_frames = max(1, int(pool_frames))
        from serkit.data.feature_transform import FeatureTransform

        #: the feature stage's module, applied to every item on reading (the Recognizer and the ONNX graph call it)
        self.transform = FeatureTransform(level, layers, frame_norm, self.pool_frames, half_frames=True)
        if normalizer is not None and hasattr(normalizer, "datasets"):
            normalizer.datasets += 1
        super().__init__(manifest, ids, labels, train, preload)

    def _read(self, i: int) -> np.ndarray:
        uid = self.ids[i]
        processed = self.level == "frames" and (self.pool_frames > 1 or self.frame_norm != "none")
        key = self._processed_key(i) if processed else None
        if key in PROCESSED_FRAMES:
            return PROCESSED_FRAMES[key]
        x = self.store.pooled(uid) if self.level == "pooled" else self.store.load(uid)
        if self.layers is not None:  # the chosen layers only are read (the store memory-maps) and normalised
            x = x[self.layers]
        stats = None
        if self.normalizer is not None and not self.speaker_stats:
            stats = self.normalizer.stats_for(self.rows["speaker"].iloc[i])
        x = self.transform.apply(x, stats, layers_chosen=True)
        if key is not None:
            PROCESSED_FRAMES[key] = x
        return x

    def _processed_key(self, i: int) -> tuple | None:
        """What determines item ``i``'s processed frames, with its speaker's statistics by content (every fold's
        normaliser gives a speaker the same statistics unless it falls back to that fold's global ones); None: not
        shared."""
        stats = None
        if self.normalizer is not None and not self.speaker_stats:
            ms = getattr(self.normalizer, "stats", {}).get(str(self.rows["speaker"].iloc[i]))
            if ms is None:
                return None
            stats = hashlib.sha1(b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in ms)).hexdigest()
        return (str(getattr(self.store, "root", id(self.store))), self.ids[i],
                None if self.layers is None else tuple(int(j) for j in self.layers), stats, self.frame_norm,
                self.pool_frames)

    def lengths(self) -> np.ndarray | None:
        """Frames per item as served (after ``pool_frames`` and the ``max_frames`` crop); None for pooled items."""
        if self.level != "frames":
            return None
        if len(self._cache) == len(self.ids):  # preloaded: the processed frames themselves
            n = np.array([self._cache[i].shape[1] for i in range(len(self.ids))], dtype=np.int64)
        elif hasattr(self.store, "entry"):
            n = np.array([int(self.store.entry(u)["frames"]) for u in self.ids], dtype=np.int64)
            n = -(-n // self.pool_frames)
        else:
            return None
        return np.minimum(n, int(self.max_frames)) if self.max_frames else n

    def crop_start(self, i: int, frames: int) -> int | None:
        """Where item ``i``'s ``max_frames`` window starts (random from ``(epoch, i)`` in training, else the centre),
        or None when it is not cropped; wrappers crop frame-aligned arrays (e.g. pseudo-labels) the same way."""
        if self.level != "frames" or not self.max_frames or frames <= self.max_frames:
            return None
        if self.train:
            return int(np.random.default_rng((self.epoch, i)).integers(0, frames - self.max_frames + 1))
        return (frames - self.max_frames) // 2

    def __getitem__(self, i: int) -> dict:
        x = self._get(i)
        s = self.crop_start(i, x.shape[1]) if self.level == "frames" else None
        if s is not None:
            x = x[:, s : s + self.max_frames]
        item = self._item(i, "features" if self.level == "frames" else "pooled", x)
        item["frame_offset"] = 0 if s is None else s
        if self.speaker_stats:
            mean, std = self.normalizer.stats_for(self.rows["speaker"].iloc[i])
            item["speaker_mean"], item["speaker_std"] = mean, std
        return item


#: processed frames (``frame_norm`` / ``pool_frames``) shared by every fold and ablation row of a process
PROCESSED_FRAMES: dict = {}


class ItemsWithExtras(Dataset):
    """A view of a labelled dataset whose items gain extra keys: subclasses override :meth:`extras`.

    Keeps the base's ``enc`` / ``rows`` / ``ids`` and length, and passes ``set_epoch`` on (seeded crops).
    """

    def __init__(self, base):
        self.base = base
        self.enc, self.rows, self.ids = base.enc, base.rows, base.ids

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def lengths(self) -> np.ndarray | None:
        return item_lengths(self.base)

    def extras(self, i: int, item: dict) -> dict:
        """Keys to add to item ``i`` (the base's item, already read)."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item.update(self.extras(i, item))
        return item


def item_lengths(dataset) -> np.ndarray | None:
    """``dataset.lengths()`` (frames or samples per item) when the dataset says, else None."""
    fn = getattr(dataset, "lengths", None)
    return fn() if callable(fn) else None


def pool_frames(x: np.ndarray, k: int) -> np.ndarray:
    """Average non-overlapping windows of ``k`` frames: ``(layers, T, dim)`` -> ``(layers, ceil(T/k), dim)`` (the
    last window averages the frames it has; :func:`serkit.data.feature_transform.pool_frames`)."""
    from serkit.data.feature_transform import pool_frames as pool

    if k <= 1:
        return x
    return pool(torch.from_numpy(np.ascontiguousarray(x))[None], k)[0].numpy().astype(x.dtype)


def loader_workers(train_cfg: dict) -> dict:
    """DataLoader keyword arguments for ``train.num_workers``: worker processes kept alive between epochs (no
    re-forking every epoch for every loader: on a GPU that start-up would cost more than an epoch's compute)."""
    n = int(train_cfg["num_workers"] or 0)
    return {"num_workers": n, "persistent_workers": n > 0}


def to_device(batch: dict, device) -> dict:
    """A collated batch with its tensors on ``device`` (other entries, e.g. id lists, as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def collate(items: list[dict]) -> dict:
    """Stack labels; pad ``features`` (layers, frames, dim) along frames and build ``frame_mask``."""
    out: dict = {}
    keys = items[0].keys()
    for k in keys:
        vals = [it[k] for it in items]
        if k == "features":
            # kept in the stored dtype (float16): half the memory traffic; models cast after choosing layers
            lengths = [v.shape[1] for v in vals]
            T = max(lengths)
            L, _, D = vals[0].shape
            buf = torch.zeros((len(vals), L, T, D),
                              dtype=torch.float16 if vals[0].dtype == np.float16 else torch.float32)
            for j, v in enumerate(vals):
                buf[j, :, : v.shape[1]] = torch.from_numpy(np.ascontiguousarray(v))
            out["features"] = buf
            mask = torch.zeros(len(vals), T, dtype=torch.bool)
            for j, n in enumerate(lengths):
                mask[j, :n] = True
            out["frame_mask"] = mask
        elif k == "waveform":
            lengths = [len(v) for v in vals]
            buf = np.zeros((len(vals), max(lengths)), dtype=np.float32)
            for j, v in enumerate(vals):
                buf[j, : len(v)] = v
            out["waveform"] = torch.from_numpy(buf)
            out["lengths"] = torch.tensor(lengths, dtype=torch.long)
        elif isinstance(vals[0], dict):  # nested items, e.g. IF-MVSE views {name: (dim,)}
            out[k] = {n: torch.stack([torch.as_tensor(v[n]) for v in vals]) for n in vals[0]}
        elif torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(
                np.stack(vals).astype(vals[0].dtype if vals[0].dtype != np.float16 else np.float32))
        elif isinstance(vals[0], (int, np.integer)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(vals[0], (float, np.floating)):
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = vals
    return out


class WaveformDataset(_LabelledUtterances):
    """Utterances as waveforms ``(samples,)`` at 16 kHz (for recipes that run the encoder in the loop, e.g.
    waveform mixup or encoder fine-tuning). ``crop`` is a :class:`serkit.audio.CropPad`. Unreadable files raise
    :class:`AudioError` (filter them out beforehand with ``serkit check``)."""

    def __init__(self, manifest: pd.DataFrame, ids: Sequence[str], labels: LabelMap, crop=None, train: bool = False,
                 preload: bool = True):
        self.crop = crop
        super().__init__(manifest, ids, labels, train, preload)

    def lengths(self) -> np.ndarray | None:
        """Samples per item when preloaded and not cropped (else None: not known without reading every file)."""
        if self.crop is not None or len(self._cache) != len(self.ids):
            return None
        return np.array([len(self._cache[i]) for i in range(len(self.ids))], dtype=np.int64)

    def _read(self, i: int) -> np.ndarray:
        from serkit.audio import read_audio

        return read_audio(self.rows["path"].iloc[i])

    def __getitem__(self, i: int) -> dict:
        x = self._get(i)
        if self.crop is not None:
            rng = np.random.default_rng((self.epoch, i)) if self.train else None
            x = self.crop(x, rng) if self.train or self.crop.mode != "random" else x
        return self._item(i, "waveform", x)
