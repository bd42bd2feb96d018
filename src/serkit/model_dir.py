"""Where a model is: a local model folder, or the local snapshot of a hub model. Light (no torch), so that
``serkit info`` and other readers of a model folder's files start quickly."""

from __future__ import annotations

import os
from pathlib import Path

from serkit.errors import SerkitError


def resolve_model_dir(model: str | Path, revision: str | None = None) -> Path:
    """A local model folder, or the local snapshot of hub model ``owner/name`` (downloaded unless offline)."""
    d = Path(model)
    if d.is_dir():
        return d
    name = str(model)
    if d.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise SerkitError(f"{name}: no such model folder (and not a hub id owner/name); make one with `serkit train`")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo_id=name, revision=revision))
    except LocalEntryNotFoundError:
        where = "offline (HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise SerkitError(f"{name}: not a local folder, and hub model {name!r} is not in the local hub cache; "
                          f"{where}") from None
    except RepositoryNotFoundError:
        raise SerkitError(f"{name}: not a local folder, and no such model on the hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SerkitError(f"{name}: cannot fetch hub model: {str(exc).splitlines()[0]}") from None
