import numpy as np
import pandas as pd
import pytest

from serkit.data.normalize import SpeakerNormalizer, frame_stats, normalize_frames, normalize_pooled
from serkit.features.pooling import pooled_statistics


def _utterances(rng, n=3, layers=2, dim=5):
    return [rng.normal(2.0, 3.0, size=(layers, int(rng.integers(4, 30)), dim)).astype(np.float32) for _ in range(n)]


def test_frame_stats_from_pooled_equal_stats_over_all_frames():
    rng = np.random.default_rng(0)
    utts = _utterances(rng)
    import torch

    pooled = np.stack([pooled_statistics(torch.from_numpy(u)).numpy() for u in utts])
    mean, std = frame_stats(pooled, [u.shape[1] for u in utts])
    frames = np.concatenate(utts, axis=1)  # (layers, all frames, dim)
    np.testing.assert_allclose(mean, frames.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, frames.std(axis=1), rtol=1e-4, atol=1e-5)
    # weights are frame counts, not utterance counts: a plain average of utterance means differs
    assert not np.allclose(mean, pooled[:, :, :5].mean(axis=0), atol=1e-3)


def test_normalised_pooled_equals_pooling_of_normalised_frames():
    import torch

    rng = np.random.default_rng(1)
    u = _utterances(rng, n=1)[0]
    mean, std = rng.normal(size=(2, 5)).astype(np.float32), rng.uniform(0.5, 2, size=(2, 5)).astype(np.float32)
    direct = pooled_statistics(torch.from_numpy(normalize_frames(u, mean, std))).numpy()
    via = normalize_pooled(pooled_statistics(torch.from_numpy(u)).numpy(), mean, std)
    np.testing.assert_allclose(via, direct, rtol=1e-4, atol=1e-4)
    assert normalize_frames(u.astype(np.float16), mean, std).dtype == np.float16


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2\\*dim"):
        frame_stats(np.zeros((2, 3, 5)), [1, 2])
    with pytest.raises(ValueError, match="positive"):
        frame_stats(np.zeros((2, 3, 4)), [1, 0])


class _Store:
    def __init__(self, feats):
        import torch

        self.feats = feats
        self._pooled = {k: pooled_statistics(torch.from_numpy(v)).numpy() for k, v in feats.items()}

    def pooled(self, uid):
        return self._pooled[uid]

    def entry(self, uid):
        return {"frames": self.feats[uid].shape[1]}


def test_speaker_normalizer_uses_each_speakers_own_frames_and_no_labels():
    rng = np.random.default_rng(2)
    feats = {f"a{i}": u + 10 for i, u in enumerate(_utterances(rng))}  # speaker a is shifted by +10
    feats.update({f"b{i}": u for i, u in enumerate(_utterances(rng))})
    manifest = pd.DataFrame({"id": list(feats), "speaker": ["a"] * 3 + ["b"] * 3, "emotion": list("xyzxyz")})
    norm = SpeakerNormalizer.from_store(_Store(feats), manifest)
    for spk in "ab":
        frames = np.concatenate([norm.apply(spk, feats[f"{spk}{i}"], "frames") for i in range(3)], axis=1)
        np.testing.assert_allclose(frames.mean(axis=1), 0, atol=1e-4)
        np.testing.assert_allclose(frames.std(axis=1), 1, atol=1e-3)
    relabelled = manifest.assign(emotion=list("zzzyyy"))
    again = SpeakerNormalizer.from_store(_Store(feats), relabelled)
    for spk in "ab":
        for x, y in zip(norm.stats[spk], again.stats[spk], strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(KeyError, match="speaker 'c'"):
        norm.apply("c", feats["a0"], "frames")


class _TimedStore(_Store):
    """``_Store`` whose entries also carry seconds (10 ms per frame), as the feature cache's do."""

    def entry(self, uid):
        return {"frames": self.feats[uid].shape[1], "seconds": 0.01 * self.feats[uid].shape[1]}


def test_speakers_with_too_little_speech_fall_back_to_the_reference_statistics():
    rng = np.random.default_rng(3)
    feats, rows = {}, []
    plan = {"big": (8, 300), "few": (2, 300), "short": (8, 20)}  # speaker -> (utterances, frames each)
    for spk, (n, frames) in plan.items():
        for u in range(n):
            uid = f"{spk}{u}"
            feats[uid] = rng.normal(5.0 if spk == "big" else -3.0, 1.0, size=(2, frames, 5)).astype(np.float32)
            rows.append({"id": uid, "speaker": spk})
    man = pd.DataFrame(rows)
    store = _TimedStore(feats)
    train = [u for u in man["id"] if u.startswith(("big", "few"))]
    norm = SpeakerNormalizer.from_store(store, man, min_seconds=10.0, min_utterances=5, reference_ids=train)
    # "few": 2 utterances (6 s each) < 5 utterances; "short": 8 x 0.2 s = 1.6 s < 10 s
    assert norm.fallback_speakers == ["few", "short"]
    ref = frame_stats(np.stack([store.pooled(u) for u in train]), [feats[u].shape[1] for u in train])
    for spk in ("few", "short"):
        np.testing.assert_allclose(norm.stats[spk][0], ref[0])
        np.testing.assert_allclose(norm.stats[spk][1], ref[1])
    own = frame_stats(np.stack([store.pooled(f"big{u}") for u in range(8)]), [300] * 8)
    np.testing.assert_allclose(norm.stats["big"][0], own[0])
    # without minimums every speaker keeps its own statistics (the API as before)
    assert SpeakerNormalizer.from_store(store, man).fallback_speakers == []
