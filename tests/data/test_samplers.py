import numpy as np
import pytest

from serkit.data.samplers import LengthGroupedBatchSampler, SeededShuffleSampler


def _padded(lengths, batches):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_length_grouped_batches_cover_every_item_with_less_padding():
    lengths = np.random.default_rng(0).integers(100, 300, 203)
    s = LengthGroupedBatchSampler(lengths, 16, group=4, seed=3, drop_last=False)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(203))
    shuffled = SeededShuffleSampler(203, 3)
    order = list(shuffled)
    random_batches = [order[j:j + 16] for j in range(0, 203, 16)]
    assert _padded(lengths, batches) < 0.95 * _padded(lengths, random_batches)


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = np.random.default_rng(1).integers(50, 80, 100)
    a = LengthGroupedBatchSampler(lengths, 8, group=2, seed=0)
    b = LengthGroupedBatchSampler(lengths, 8, group=2, seed=0)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_length_grouped_drop_last_keeps_full_batches_only():
    s = LengthGroupedBatchSampler(np.arange(1, 38), 8, group=2, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 4 and all(len(b) == 8 for b in batches)
    with pytest.raises(ValueError, match="batch_size and group"):
        LengthGroupedBatchSampler(np.arange(5), 0)


def test_default_sampler_groups_frame_items_and_shuffles_pooled_ones():
    from serkit.recipes.base import Recipe

    class Items:
        def __init__(self, lengths):
            self._lengths = lengths

        def __len__(self):
            return 40

        def lengths(self):
            return self._lengths

    cfg = {"train": {"batch_size": 8, "group_by_length": 2}}
    kind, sampler = Recipe().train_sampler(cfg, Items(np.arange(40)), 0)
    assert kind == "batch_sampler" and isinstance(sampler, LengthGroupedBatchSampler) and sampler.group == 2
    assert isinstance(Recipe().train_sampler(cfg, Items(None), 0), SeededShuffleSampler)
    assert isinstance(Recipe().train_sampler({"train": {"batch_size": 8, "group_by_length": 0}},
                                             Items(np.arange(40)), 0), SeededShuffleSampler)
