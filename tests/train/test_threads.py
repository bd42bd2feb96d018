"""train.threads: one torch thread for a pooled head (auto), torch's default for other training, a number as
given; the count is restored after training and recorded per fold."""

from __future__ import annotations

import pytest
import torch

from serkit.config import load_config
from serkit.errors import ConfigError
from serkit.train.threads import torch_threads, training_threads
from tests.train.conftest import tiny_config


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_auto_picks_one_thread_for_a_pooled_head_only(tiny_corpus):
    assert training_threads(load_config(tiny_config(tiny_corpus, features={"level": "pooled"}))) == 1
    assert training_threads(load_config(tiny_config(tiny_corpus))) is None  # frames: torch's default
    assert training_threads(load_config(tiny_config(tiny_corpus, train={"threads": 3}))) == 3
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(tiny_config(tiny_corpus, train={"threads": 0}))


def test_torch_threads_restores_the_count(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_a_pooled_fold_trains_on_one_thread_and_says_so(tiny_corpus, tmp_path, two_threads):
    from serkit.train.cv import run_cv

    cfg = tiny_config(tiny_corpus, features={"level": "pooled", "layers": "all"}, train={"epochs": 1})
    cfg["model"] = {"name": "pooled_mlp", "hidden": [], "dropout": 0.0}
    res = run_cv(cfg, tmp_path / "run", log=lambda *a: None, folds_only=[0])
    assert [f["threads"] for f in res["folds"]] == [1] and res["threads"] == [1]
    assert torch.get_num_threads() == 2
