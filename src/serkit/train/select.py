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


#: ``features.normalize: auto`` considers speaker statistics only when the training speakers show, on average, at
#: least this share of the classes: the mean of a speaker heard in one or two emotions carries those emotions, and
#: subtracting it subtracts them (validation speakers of such a corpus are too few to catch it reliably)
MIN_EMOTION_COVERAGE = 0.5


def emotion_coverage(manifest, ids, column: str = "emotion") -> float:
    """Mean over the speakers of ``ids`` of the share of the classes (of ``ids``) each speaker shows."""
    rows = manifest.set_index("id").loc[[str(i) for i in ids]]
    n = rows[column].nunique()
    if n == 0:
        return 1.0
    return float((rows.groupby(rows["speaker"].astype(str))[column].nunique() / n).mean())


def drop_confounded_speaker_statistics(cands: list[tuple[dict, dict]], cfg: dict, manifest, train_ids
                                       ) -> tuple[list[tuple[dict, dict]], str | None]:
    """Without the ``features.normalize: speaker`` candidates of ``auto`` when the fold's training speakers show
    too few emotions each (:data:`MIN_EMOTION_COVERAGE`); ``(candidates, why)`` (why: None when kept)."""
    if "features.normalize" not in grid(cfg) or cfg["task"] != "classification" or "speaker" not in manifest:
        return cands, None
    share = emotion_coverage(manifest, train_ids)
    if share >= MIN_EMOTION_COVERAGE:
        return cands, None
    kept = [(ch, c) for ch, c in cands if ch.get("features.normalize") != "speaker"]
    why = (f"speaker statistics not considered: the training speakers show {share:.0%} of the classes each on "
           f"average (under {MIN_EMOTION_COVERAGE:.0%}), so a speaker's mean would carry its emotions")
    return kept, why


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
