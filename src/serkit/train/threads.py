"""How many torch CPU threads training uses (``train.threads``).

``auto`` (the default): one thread for a head on pooled statistics (``features.level: pooled``, e.g. the default
head of ``serkit cv TABLE``), torch's own default (one per core) for everything else. A pooled head's steps are
small matrix products whose time is thread start-up and synchronisation: on a 2-core machine it trained 5x faster
on one thread than on two, and 7x faster beside a busy process (``bench/threads.py``). An integer sets the count
for any training. Feature extraction is not affected.
"""

from __future__ import annotations

import contextlib

import torch


def training_threads(cfg: dict) -> int | None:
    """The thread count ``cfg`` asks training to use; None: torch's default (left as it is)."""
    threads = cfg["train"]["threads"]
    if threads == "auto":
        return 1 if cfg["features"].get("level") == "pooled" else None
    return int(threads)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` intra-op threads (None: as they are), restoring the previous count after."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def torch_thread_count() -> int:
    """torch's intra-op thread count now."""
    return torch.get_num_threads()
