"""Per-fold choices made on the validation speakers only: the feature normalisation (``features.normalize:
auto``) and any option listed in ``train.select`` (e.g. the head's weight decay and dropout).

Every combination of the candidate values is trained on the fold's training part and scored on its validation
part (the config's ``train.monitor``, best epoch); the best one (ties: the first in grid order) is kept and the
fold goes on with it (refit, test) exactly as a config naming those values would. The test part is never looked
at. Each fold's result records the grid, every candidate's validation score and the choice (results.json:
``folds[k].selection``).
"""

from __future__ import annotations

import copy
import itertools
import math
import re

from serkit.errors import ConfigError

#: What ``features.normalize: auto`` chooses between, in this order (ties keep the first).
AUTO_NORMALIZE = ("speaker", "none")


def grid(cfg: dict) -> dict[str, list]:
    """``{dotted config key: candidate values}`` of the config (empty: nothing to choose)."""
    g: dict[str, list] = {}
    if cfg["features"].get("normalize") == "auto":
        g["features.normalize"] = list(AUTO_NORMALIZE)
    for key, values in (cfg["train"].get("select") or {}).items():
        g[str(key)] = list(values)
    return g


def set_dotted(cfg: dict, dotted: str, value) -> None:
    cur = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(p)]
            continue
        if not isinstance(cur.get(p), (dict, list)):
            raise ConfigError(f"train.select: {dotted!r} does not name an option of this config")
        cur = cur[p]
    if isinstance(cur, list):
        cur[int(parts[-1])] = value
    else:
        cur[parts[-1]] = value


def candidates(cfg: dict) -> list[tuple[dict, dict]]:
    """``[(choice, config with that choice applied and nothing left to choose)]``, in grid order."""
    g = grid(cfg)
    if not g:
        return [({}, cfg)]
    keys = list(g)
    out = []
    for values in itertools.product(*(g[k] for k in keys)):
        choice = dict(zip(keys, values))
        c = copy.deepcopy(cfg)
        c["train"]["select"] = None
        for k, v in choice.items():
            set_dotted(c, k, v)
        out.append((choice, c))
    return out


def slug(choice: dict) -> str:
    """A folder name for one candidate, e.g. ``features.normalize=none,train.weight_decay=0.1``."""
    text = ",".join(f"{k}={v}" for k, v in choice.items()) or "default"
    return re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", text)


def best(scores: list[float | None]) -> int:
    """Index of the highest validation score (None / NaN never wins; ties keep the first)."""
    ranked = [(s if s is not None and math.isfinite(s) else float("-inf"), -i) for i, s in enumerate(scores)]
    return -max(ranked)[1]


def describe_choice(selection: dict | None) -> str:
    if not selection:
        return ""
    return ", ".join(f"{k}={v}" for k, v in selection["chosen"].items())
