"""The writers' lock of a feature store folder: one ``fcntl.flock`` on ``<store>/.lock``, re-entrant per process.

Several processes may write one store (two ``serkit cv`` runs of one corpus and encoder share it):
:func:`store_lock` (``FeatureStore.lock()``) is an exclusive per-store lock. Extraction holds it for the whole
run, so a second extraction waits and then finds everything cached; the ranks of one ``torchrun`` extraction
split the ids among themselves instead and lock only their index appends, the spec check and the clean-up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
from pathlib import Path

#: The lock file inside a store folder (holds the pid of the last holder).
LOCK_FILE = ".lock"

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

