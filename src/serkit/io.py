"""File I/O every module shares: atomic writes, and reading torch files without running code from them.

Atomic writes go to a temporary file in the target's folder, named ``.<name>.<pid>.<random>.tmp`` after the
writing process, and are renamed over the target (``os.replace``). The finished file gets the mode an ordinary
``open()`` would give it (``0o666`` minus the umask), not ``mkstemp``'s private 0600, so shared caches and model
folders stay readable to the team. :func:`remove_stale_temporaries` deletes only temporaries whose writer has
died, so one process never removes another's file half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from serkit.errors import CheckpointError

TMP_SUFFIX = ".tmp"
#: Largest table (manifest, corpus CSV) serkit reads: a wrong or endless file must not take all memory and time.
MAX_TABLE_BYTES = 1 << 30


def not_a_regular_file(path: str | Path, max_bytes: int | None = None) -> str | None:
    """Why ``path`` must not be opened for reading, from ``os.stat`` alone (which never blocks), or None:
    ``"not a regular file: a FIFO ..."`` (a FIFO, device, socket or folder: reading could hang or never end) or
    ``"too large: ..."`` (over ``max_bytes``). A missing path is None: callers report it their own way."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "a socket or other")
        return f"not a regular file: {kind}, refused before reading"
    if max_bytes is not None and st.st_size > max_bytes:
        return f"too large: {st.st_size} bytes > {max_bytes} bytes"
    return None


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for an instant, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a new file gets from ``open()`` under this process's umask (e.g. 0o644 for 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, move it over ``path``.

    For writers that want a file name (``DataFrame.to_csv``, ``safetensors.save_file``, ``np.save``). The
    temporary is removed on error; the target is never seen half-written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise naming(exc, path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk or a quota while writing: name the target, not the temporary
        raise naming(exc, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def naming(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name where it names none or a temporary file of ours (``No space left on
    device`` from a write names nothing); same type (``PermissionError`` ...) and errno."""
    if exc.filename is not None and not str(exc.filename).endswith(TMP_SUFFIX):
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *, fsync: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary binary file and move it over ``path`` (see the module doc).

    ``fsync``: flush it to the disk first (power-loss durability; the feature store skips it per file, as its
    index line, written after the rename, is what marks an utterance finished)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_default))


def temporary_owner(path: str | Path) -> int | None:
    """The pid of the process that is writing temporary file ``path`` (from its name), or None if not one of ours."""
    m = re.search(r"\.(\d+)\.[^.]*\.tmp$", Path(path).name)
    return int(m.group(1)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the ``.*.tmp`` files under ``folder`` left by dead writers; live writers' are kept.

    A temporary without a pid in its name (written by an older serkit) counts as stale. Returns how many were
    removed. Pids are those of this machine: folders written from several hosts at once need a lock instead.
    """
    removed = 0
    for tmp in Path(folder).glob(f"**/.*{TMP_SUFFIX}"):
        pid = temporary_owner(tmp)
        if pid is not None and (pid == os.getpid() or _alive(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def load_tensors(path: str | Path, map_location="cpu"):
    """Read a file written by ``torch.save`` (a Lightning checkpoint, a state dict) without running code from it.

    ``torch.load(weights_only=True)`` admits tensors, containers and plain values only, so a pickle crafted to
    run code when loaded is refused before it runs. Raises :class:`~serkit.errors.CheckpointError` (one line,
    naming the file) for such a file and for a truncated or foreign one.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        if lines[0].startswith("Weights only load failed"):
            detail = next((ln for ln in lines[1:] if not ln.startswith(("Check the documentation", "Please file"))),
                          "")
            why = "it holds objects other than tensors and plain values" + (f" ({detail})" if detail else "")
        else:
            why = f"not a readable torch file ({lines[0].split('. ')[0]})"
        err = CheckpointError(
            f"{path}: refused to load: {why}; serkit reads torch files with weights_only=True and never runs code "
            f"from them. Delete the file (or use a new --out folder) if it is not yours")
        #: the file is cut short or garbled (e.g. a kill while it was written), not a file of foreign objects
        err.torn = not lines[0].startswith("Weights only load failed")
        raise err from None


def _default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
