"""The feature stage's frame processing: per-frame layer normalisation, pooling, and the process-level memo of
processed frames shared by folds (``serkit.train.feature_stage``, ``serkit.data.features``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from serkit.data import features as features_module
from serkit.data.features import FeatureDataset, pool_frames
from serkit.data.labels import LabelMap
from serkit.data.normalize import SpeakerNormalizer
from serkit.errors import ConfigError
from serkit.recipes.mll import check_recipe_options
from serkit.train.feature_stage import FeatureStage


class Store:
    """An in-memory feature store: (layers, frames, dim) per id; counts loads."""

    def __init__(self, arrays: dict[str, np.ndarray], root: str):
        self.arrays, self.root, self.loads = arrays, root, 0
        self.layers = list(range(next(iter(arrays.values())).shape[0]))

    def load(self, uid: str) -> np.ndarray:
        self.loads += 1
        return self.arrays[uid]


def _corpus(root: str):
    rng = np.random.default_rng(0)
    arrays = {f"u{i}": (3.0 + 2.0 * rng.standard_normal((2, 9, 6))).astype(np.float16) for i in range(4)}
    manifest = pd.DataFrame({"id": list(arrays), "speaker": ["a", "a", "b", "b"], "emotion": ["x", "y", "x", "y"],
                             "gender": ["f", "f", "m", "m"]})
    return Store(arrays, root), manifest, LabelMap.fit(manifest, "classification", [])


def _stats(store, speaker_ids):
    return {s: (np.concatenate([store.arrays[i] for i in ids], 1).astype(np.float32).mean(1),
                np.concatenate([store.arrays[i] for i in ids], 1).astype(np.float32).std(1) + 1e-3)
            for s, ids in speaker_ids.items()}


@pytest.fixture(autouse=True)
def _empty_memo():
    features_module.PROCESSED_FRAMES.clear()
    yield
    features_module.PROCESSED_FRAMES.clear()


def test_frame_norm_layer_normalises_every_frame_before_pooling():
    store, manifest, labels = _corpus("mem://a")
    ds = FeatureDataset(store, manifest, ["u0"], labels, frame_norm="layer", preload=False)
    x = ds[0]["features"].astype(np.float32)
    assert x.shape == (2, 9, 6)
    np.testing.assert_allclose(x.mean(-1), 0, atol=1e-2)
    np.testing.assert_allclose(x.std(-1), 1, atol=1e-2)
    pooled = FeatureDataset(store, manifest, ["u0"], labels, frame_norm="layer", pool_frames=4, preload=False)
    y = pooled[0]["features"].astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(store.arrays["u0"].astype(np.float32)), (6,)).numpy()
    np.testing.assert_allclose(y, pool_frames(ref, 4), atol=2e-3)
    assert y.shape == (2, 3, 6)  # ceil(9 / 4) windows, the last averaging the one frame it has
    with pytest.raises(ValueError, match="frame_norm"):
        FeatureDataset(store, manifest, ["u0"], labels, frame_norm="batch")


def test_processed_frames_are_shared_across_folds_only_when_everything_that_determines_them_agrees():
    store, manifest, labels = _corpus("mem://b")
    stats = _stats(store, {"a": ["u0", "u1"], "b": ["u2", "u3"]})
    opts = {"frame_norm": "layer", "pool_frames": 2, "normalize": "none"}
    stage = FeatureStage(opts, store, manifest)
    first = stage.dataset(["u0", "u2"], labels, True)
    assert store.loads == 2
    # another fold: a new normaliser object with the same statistics, and the same stage options: no new reads
    fold_a = FeatureDataset(store, manifest, ["u0", "u2"], labels, normalizer=SpeakerNormalizer(stats),
                            frame_norm="layer", pool_frames=2)
    fold_b = FeatureDataset(store, manifest, ["u0", "u2"], labels, normalizer=SpeakerNormalizer(dict(stats)),
                            frame_norm="layer", pool_frames=2)
    assert store.loads == 4  # the normalised frames differ from the unnormalised ones: read once more
    np.testing.assert_array_equal(fold_a[0]["features"], fold_b[0]["features"])
    assert store.loads == 4
    # a speaker whose statistics differ (e.g. a fold's global fallback) is not served the other's frames
    other = {**stats, "a": (stats["a"][0] + 1.0, stats["a"][1])}
    fold_c = FeatureDataset(store, manifest, ["u0", "u2"], labels, normalizer=SpeakerNormalizer(other),
                            frame_norm="layer", pool_frames=2)
    assert store.loads == 5  # u0 (speaker a) re-read, u2 (speaker b) shared
    assert not np.array_equal(fold_c[0]["features"], fold_a[0]["features"])
    np.testing.assert_array_equal(fold_c[1]["features"], fold_a[1]["features"])
    # other layers or another pooling are other entries; an unprocessed read is not memoised
    FeatureDataset(store, manifest, ["u0"], labels, layers=[1], frame_norm="layer", pool_frames=2)
    FeatureDataset(store, manifest, ["u0"], labels, frame_norm="layer", pool_frames=3)
    assert store.loads == 7
    n = len(features_module.PROCESSED_FRAMES)
    FeatureDataset(store, manifest, ["u0"], labels)
    assert store.loads == 8 and len(features_module.PROCESSED_FRAMES) == n
    assert not np.array_equal(first[0]["features"], fold_a[0]["features"])


def test_the_stage_reads_another_store_the_same_way_and_records_frame_norm():
    store, manifest, labels = _corpus("mem://c")
    variants, vman, _ = _corpus("mem://c-variants")
    stage = FeatureStage({"frame_norm": "layer", "pool_frames": 2}, store, manifest)
    ds = stage.dataset(["u1"], labels, True, store=variants, manifest=vman)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(variants.arrays["u1"].astype(np.float32)), (6,)).numpy()
    np.testing.assert_allclose(ds[0]["features"].astype(np.float32), pool_frames(ref, 2), atol=2e-3)
    assert variants.loads == 1 and store.loads == 0
    assert stage.record()["frame_norm"] == "layer" and stage.record()["pool_frames"] == 2


def test_mll_refuses_its_old_recipe_options_naming_the_feature_stage_key():
    with pytest.raises(ConfigError, match="recipe_options.frame_stride moved to the feature stage: use "
                                          "features.pool_frames"):
        check_recipe_options({"recipe_options": {"frame_stride": 4}})
    with pytest.raises(ConfigError, match="frame_norm: layer"):
        check_recipe_options({"recipe_options": {"prenormalize": True}})
    with pytest.raises(ConfigError, match="unknown key"):
        check_recipe_options({"recipe_options": {"bogus": 1}})
    check_recipe_options({"recipe_options": {}})


def test_lengths_are_the_frames_items_are_served_with():
    """What length-grouped batches sort by: frames after pooling and the max_frames crop (from the preloaded
    frames, or the store's index without reading them); pooled items have none."""
    store, manifest, labels = _corpus("mem://len")
    store.arrays["u1"] = store.arrays["u1"][:, :5]
    ds = FeatureDataset(store, manifest, ["u0", "u1"], labels, pool_frames=2)
    np.testing.assert_array_equal(ds.lengths(), [5, 3])
    assert [ds[i]["features"].shape[1] for i in range(2)] == [5, 3]
    store.entry = lambda uid: {"frames": store.arrays[uid].shape[1]}
    lazy = FeatureDataset(store, manifest, ["u0", "u1"], labels, preload=False, max_frames=6)
    np.testing.assert_array_equal(lazy.lengths(), [6, 5])
    assert store.loads == 2  # the preloaded dataset's reads only
    store.pooled = lambda uid: np.zeros((2, 12), np.float32)
    assert FeatureDataset(store, manifest, ["u0"], labels, level="pooled").lengths() is None
