"""One writer per run folder: ``serkit cv``, ``serkit train`` and ``serkit ablate`` hold an exclusive lock.

The lock is ``fcntl.flock`` on a small file (``.serkit.lock`` inside a run folder; ``.<name>.lock`` beside a model
folder, which ``serkit train`` replaces whole). The kernel drops it when the holder exits, however it exits (a
SIGKILL included), so a crashed run never leaves a stale lock. A second run on the same folder is refused with one
line naming the holder's pid; it never waits and never writes. The ranks other than 0 of one distributed run
(Lightning's DDP launcher re-runs the command for them; torchrun starts every rank) are part of rank 0's run and
take no lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from serkit.errors import SerkitError

#: Lock file inside a run folder (cv, ablate).
LOCK_NAME = ".serkit.lock"


class RunFolderBusy(SerkitError):
    """Another live serkit process holds the run folder's lock."""


def secondary_rank() -> bool:
    """Whether this process is a rank other than 0 of a distributed run (from ``RANK``, else ``NODE_RANK`` and
    ``LOCAL_RANK``, as torchrun and Lightning's launcher set them): rank 0 holds the run folder for all of them."""
    env = os.environ
    try:
        if "RANK" in env:
            return int(env["RANK"]) != 0
        return int(env.get("NODE_RANK", "0")) != 0 or int(env.get("LOCAL_RANK", "0")) != 0
    except ValueError:
        return False


def model_lock_path(model_dir: str | Path) -> Path:
    """The lock file of a model folder: beside it (``.<name>.lock``), since ``serkit train`` replaces the folder."""
    model_dir = Path(model_dir)
    return model_dir.parent / f".{model_dir.name}.lock"


@contextlib.contextmanager
def run_lock(lock_file: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created with its folder) for the block; ``what`` names the folder
    in the refusal. Raises :class:`RunFolderBusy` at once when another process holds it, and a one-line
    :class:`SerkitError` naming the path when the folder cannot be written. A :func:`secondary_rank` takes no
    lock (its rank 0 holds it)."""
    lock_file = Path(lock_file)
    if secondary_rank():
        yield lock_file
        return
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_file, "a+")  # noqa: SIM115 (held open for the block)
    except OSError as exc:
        raise SerkitError(f"{lock_file.parent}: cannot write here ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunFolderBusy(f"{what}: in use by {holder}; wait for it to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} (serkit {' '.join(sys.argv[1:2]) or 'python'})\n")
        fh.flush()
        yield lock_file
    finally:
        fh.close()  # releases the lock


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """:func:`run_lock` on ``folder/.serkit.lock`` (a cv or ablation run folder)."""
    folder = Path(folder)
    with run_lock(folder / LOCK_NAME, str(folder)) as path:
        yield path


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_folder(new: str | Path, target: str | Path) -> None:
    """Put folder ``new`` at ``target``, replacing what is there so that a reader of ``target`` finds the old folder
    or the new one, never neither nor a mix of files: one ``renameat2(RENAME_EXCHANGE)`` where the system has it
    (then the old folder, now at ``new``, is deleted), else two renames."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        _remove(new)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.rename(target, old)
    os.rename(new, target)
    _remove(old)


def _remove(path: Path) -> None:
    """Delete the replaced folder (or the link that stood for it: the folder it points to is not ours)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
