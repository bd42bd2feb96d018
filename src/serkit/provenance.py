"""Where a result came from: serkit's version, the git commit of its source and the machine that ran it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit (40 hex digits) checked out where serkit's source lives (or at ``path``); ``None`` outside a git
    checkout (an installed wheel) or without git. A checkout with uncommitted changes gets ``-dirty`` appended."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=False, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    """``{"cpu": model name, "cores": logical CPUs, "system": OS and architecture}``."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}"}


def provenance() -> dict:
    """The fields every results.json carries: ``serkit_version``, ``git_commit`` (``None`` outside a checkout) and
    ``machine``."""
    from serkit.version import __version__

    return {"serkit_version": __version__, "git_commit": git_commit(), "machine": machine()}
