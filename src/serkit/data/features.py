"""Datasets that serve cached encoder features (with frame masks) or waveforms to training.

Items are dicts of numpy arrays; :func:`collate` pads frames to the batch's longest item and adds
``frame_mask`` (batch, frames) bool. Features are ``(layers, frames, dim)`` float16 in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from serkit.data.labels import LabelMap


class FeatureDataset(Dataset):
    """Utterances of ``ids`` with their cached features and encoded labels.

    ``store`` has ``load(id) -> (layers, frames, dim)`` and ``pooled(id) -> (layers, 2*dim)``. ``level``
    ``"frames"`` serves ``features``; ``"pooled"`` serves ``pooled``. ``preload`` reads everything into memory once
    (float16), which is what makes CPU training fast; ``max_frames`` crops long items (random crop when
    ``train``, centre otherwise).
    """

    def __init__(self, store, manifest: pd.DataFrame, ids: Sequence[str], labels: LabelMap, level: str = "frames",
                 preload: bool = True, max_frames: int | None = None, train: bool = False, layers: list[int] | None = None):
        self.store, self.level, self.max_frames, self.train = store, level, max_frames, train
        self.layers = layers
        self.ids = [str(i) for i in ids]
        rows = manifest.set_index("id").loc[self.ids].reset_index()
        self.rows = rows
        self.enc = labels.encode(rows)
        self._cache: dict[int, np.ndarray] = {}
        self.epoch = 0
        if preload:
            for i in range(len(self.ids)):
                self._cache[i] = self._read(i)

    def _read(self, i: int) -> np.ndarray:
        uid = self.ids[i]
        x = self.store.pooled(uid) if self.level == "pooled" else self.store.load(uid)
        if self.layers is not None:
            x = x[self.layers]
        return np.asarray(x, dtype=np.float16 if self.level == "frames" else np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        x = self._cache.get(i)
        if x is None:
            x = self._read(i)
        if self.level == "frames" and self.max_frames and x.shape[1] > self.max_frames:
            if self.train:
                rng = np.random.default_rng((self.epoch, i))
                s = int(rng.integers(0, x.shape[1] - self.max_frames + 1))
            else:
                s = (x.shape[1] - self.max_frames) // 2
            x = x[:, s : s + self.max_frames]
        item = {"index": i, ("features" if self.level == "frames" else "pooled"): x}
        for k, v in self.enc.items():
            item[k] = v[i]
        return item


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
            buf = torch.zeros((len(vals), L, T, D), dtype=torch.float16 if vals[0].dtype == np.float16 else torch.float32)
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
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals).astype(vals[0].dtype if vals[0].dtype != np.float16 else np.float32))
        elif isinstance(vals[0], (int, np.integer)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        elif isinstance(vals[0], (float, np.floating)):
            out[k] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[k] = vals
    return out


class WaveformDataset(Dataset):
    """Utterances as waveforms ``(samples,)`` at 16 kHz (for recipes that run the encoder in the loop, e.g.
    waveform mixup or encoder fine-tuning). ``crop`` is a :class:`serkit.audio.CropPad`. Unreadable files raise
    :class:`AudioError` (filter them out beforehand with ``serkit check``)."""

    def __init__(self, manifest: pd.DataFrame, ids: Sequence[str], labels: LabelMap, crop=None, train: bool = False,
                 preload: bool = True):
        from serkit.audio import read_audio

        self.ids = [str(i) for i in ids]
        self.rows = manifest.set_index("id").loc[self.ids].reset_index()
        self.enc = labels.encode(self.rows)
        self.crop, self.train, self.epoch = crop, train, 0
        self._read = read_audio
        self._cache = {i: read_audio(p) for i, p in enumerate(self.rows["path"])} if preload else {}

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        x = self._cache.get(i)
        if x is None:
            x = self._read(self.rows["path"].iloc[i])
        if self.crop is not None:
            rng = np.random.default_rng((self.epoch, i)) if self.train else None
            x = self.crop(x, rng) if self.train or self.crop.mode != "random" else x
        item = {"index": i, "waveform": x}
        for k, v in self.enc.items():
            item[k] = v[i]
        return item
