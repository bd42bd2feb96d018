"""Experiment configs: YAML files validated against a schema, with ``--set key.sub=value`` overrides.

A config names its corpus, protocol, encoder, layers, model (head), objective and schedule; see
``configs/`` for examples. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import yaml

from serkit.config_defaults import DEFAULTS
from serkit.errors import ConfigError

TYPES = {
    "name": str, "recipe": str, "corpus": (str, list, type(None)), "root": (str, dict, type(None)),
    "manifest": (str, type(None)), "class_set": (str, dict, type(None)), "task": str, "targets": list,
    "protocol": (dict, type(None)), "encoder": (dict, list), "features": dict, "model": dict,
    "objective": (list, type(None)), "augment": (dict, type(None)),
    "train": dict, "predict": dict, "recipe_options": dict,
}
CHOICES = {
    "task": ("classification", "regression"),
    "encoder.mode": ("native", "padded"),
    "features.source": ("cache", "waveform"),
    "features.level": ("frames", "pooled"),
    "features.normalize": ("none", "speaker", "auto"),
    "features.frame_norm": ("none", "layer"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("none", "cosine", "exponential", "warmup_linear"),
    "train.logger": ("csv", "tensorboard", "mlflow"),
    "train.solver": ("gradient", "ridge"),
    "train.final_stage": ("last", "best_val"),
}


#: Numeric settings beyond epochs / batch_size / patience / lr / weight_decay: dotted key -> (kind, None allowed).
#: :func:`validate` refuses a value that is not a number of that kind, naming the key (values are left as given).
NUMERIC = {
    "train.seed": (int, False), "train.min_epochs": (int, False), "train.eval_batch_size": (int, False),
    "train.num_workers": (int, True), "train.warmup_epochs": (int, False), "train.decay_epochs": (int, True),
    "train.lr_decay": (float, False), "train.group_by_length": (int, False), "train.grad_clip": (float, True),
    "train.ridge_alpha": (float, False),
    "predict.window_seconds": (float, False), "predict.hop_seconds": (float, False),
    "features.max_frames": (int, True), "features.pool_frames": (int, False), "encoder.batch_seconds": (float, False),
}


#: Old spellings: ``(section, key) -> (section, key)`` moved on loading with a FutureWarning (one spelling each).
DEPRECATED = {
    ("train", "max_frames"): ("features", "max_frames"),
    ("model", "layers"): ("features", "layers"),
}


#: Keys that were accepted but never read: dropped when unset (configs saved by older versions), else an error.
DEAD = {(None, "sampler"), ("features", "max_seconds"), ("train", "class_weights")}


def _move_deprecated(raw: dict, source: str) -> dict:
    """Move old spellings (:data:`DEPRECATED`) of a raw config to their one place, warning once per key; drop
    unset :data:`DEAD` keys."""
    import warnings

    for sec, key in DEAD:
        holder = raw if sec is None else raw.get(sec)
        if isinstance(holder, dict) and key in holder:
            name = key if sec is None else f"{sec}.{key}"
            if holder[key] is not None:
                raise ConfigError(f"{source}: {name} was never used by serkit and is removed; "
                                  + ("class weights go on the loss term (objective: [{name: cross_entropy, "
                                     "class_weights: balanced}])" if key == "class_weights" else "delete it"))
            holder = {k: v for k, v in holder.items() if k != key}
            raw = holder if sec is None else {**raw, sec: holder}
    for (sec, key), (to_sec, to_key) in DEPRECATED.items():
        old = raw.get(sec)
        if not isinstance(old, dict) or key not in old:
            continue
        if old[key] is None:
            raw = {**raw, sec: {k: v for k, v in old.items() if k != key}}
            continue
        new = raw.get(to_sec) if isinstance(raw.get(to_sec), dict) else {}
        if new.get(to_key) is not None and new[to_key] != old[key]:
            raise ConfigError(f"{source}: {sec}.{key}={old[key]!r} and {to_sec}.{to_key}={new[to_key]!r} disagree; "
                              f"{sec}.{key} is the old spelling of {to_sec}.{to_key}: give only that")
        warnings.warn(f"{source}: {sec}.{key} is deprecated; write {to_sec}.{to_key} (moved for this run)",
                      FutureWarning, stacklevel=3)
        raw = {**raw, sec: {k: v for k, v in old.items() if k != key}, to_sec: {**new, to_key: old[key]}}
    return raw


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        key = f"{path}{k}"
        if k not in out and path == "" and k not in DEFAULTS:
            raise ConfigError(f"config: unknown key {key!r}; known top-level keys: {sorted(DEFAULTS)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("protocol", "class_set"):
            out[k] = _merge(out[k], v, f"{key}.")
        else:
            out[k] = v
    return out


def _check_subkeys(cfg: dict):
    for section in ("train", "features", "predict"):
        allowed = set(DEFAULTS[section])
        extra = set(cfg[section]) - allowed
        if extra:
            raise ConfigError(f"config: unknown key(s) {sorted(f'{section}.{k}' for k in extra)}; "
                              f"known: {sorted(allowed)}")
    if isinstance(cfg["encoder"], dict):
        allowed = set(DEFAULTS["encoder"]) | {"revision", "chunk_seconds", "name", "finetune", "dtype"}
        extra = set(cfg["encoder"]) - allowed
        if extra:
            raise ConfigError(f"config: unknown key(s) {sorted('encoder.' + k for k in extra)}; "
                              f"known: {sorted(allowed)}")


def _precisions(cfg: dict) -> None:
    """``encoder.precision`` (each view's, for a list of encoders) and ``train.precision``: auto / fp32 / bf16
    (:mod:`serkit.precision`); ``train.precision`` also takes Lightning's own strings. The former
    ``encoder.dtype`` is read as ``encoder.precision`` with a warning."""
    from serkit.precision import PRECISIONS

    encs = cfg["encoder"] if isinstance(cfg["encoder"], list) else [cfg["encoder"]]
    for i, enc in enumerate(encs):
        where = "encoder" if isinstance(cfg["encoder"], dict) else f"encoder[{i}]"
        if not isinstance(enc, dict):
            continue
        if "dtype" in enc:
            legacy = enc.pop("dtype")
            warnings.warn(f"config: {where}.dtype is deprecated; use {where}.precision (auto, fp32, bf16)",
                          DeprecationWarning, stacklevel=3)
            if legacy not in PRECISIONS:
                raise ConfigError(f"config: {where}.dtype={legacy!r} is not one of {PRECISIONS}")
            enc["precision"] = legacy
        if enc.get("precision", DEFAULTS["encoder"]["precision"]) not in PRECISIONS:
            raise ConfigError(f"config: {where}.precision={enc['precision']!r} is not one of {PRECISIONS}")
        _check_level(enc.get("level_db"), f"{where}.level_db")
    lightning = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
    if str(cfg["train"]["precision"]) not in PRECISIONS + lightning:
        raise ConfigError(f"config: train.precision={cfg['train']['precision']!r} is not one of {PRECISIONS} "
                          f"(or a Lightning precision: {lightning})")


def _check_level(value, key: str) -> None:
    """``encoder.level_db`` (:mod:`serkit.level`): null or a number of dBFS in :data:`serkit.level.LEVEL_RANGE`."""
    from serkit.level import LEVEL_RANGE

    if value is None:
        return
    lo, hi = LEVEL_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"config: {key}={value!r} must be null or a level in dBFS from {lo:g} to {hi:g} (e.g. -23)")


def check_factors(factors, key: str = "features.speed_perturb") -> list[float]:
    """``features.speed_perturb`` (:mod:`serkit.augment.speed`) as a sorted list of distinct floats in (0.5, 2],
    none of them 1; a clear error naming ``key`` otherwise."""
    if factors is None:
        return []
    if not isinstance(factors, (list, tuple)):
        raise ConfigError(f"config: {key} must be a list of speed factors, e.g. [0.9, 1.1]; got {factors!r}")
    out = []
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.5 < float(f) <= 2.0 or float(f) == 1.0:
            raise ConfigError(f"config: {key} holds {f!r}: each factor must be a number in (0.5, 2], not 1")
        out.append(float(f))
    if len(set(out)) != len(out):
        raise ConfigError(f"config: {key} repeats a factor: {factors!r}")
    return sorted(out)


def validate(cfg: dict) -> dict:
    for k, t in TYPES.items():
        if not isinstance(cfg.get(k), t):
            raise ConfigError(f"config: {k!r} must be {t}, got {type(cfg.get(k)).__name__} ({cfg.get(k)!r})")
    _precisions(cfg)
    _check_subkeys(cfg)
    from serkit.models.finetune import check_config as check_finetune

    check_finetune(cfg)
    if cfg["features"].get("normalize") is None:
        cfg["features"]["normalize"] = default_normalize(cfg)
    for dotted, choices in CHOICES.items():
        v = get(cfg, dotted) if not (dotted.startswith("encoder") and isinstance(cfg["encoder"], list)) else None
        if v is not None and v not in choices:
            raise ConfigError(f"config: {dotted}={v!r} is not one of {choices}")
    if cfg["corpus"] is None and cfg["manifest"] is None:
        raise ConfigError("config: give 'corpus' (a reader name) or 'manifest' (a prepared table)")
    if not isinstance(cfg["features"]["pool_frames"], int) or cfg["features"]["pool_frames"] < 1:
        raise ConfigError("config: features.pool_frames must be an integer >= 1, "
                          f"got {cfg['features']['pool_frames']!r}")
    cfg["features"]["speed_perturb"] = check_factors(cfg["features"]["speed_perturb"])
    if cfg["features"]["speed_perturb"] and cfg["features"]["source"] != "cache":
        raise ConfigError("config: features.speed_perturb adds pre-extracted copies: set features.source: cache")
    mf = cfg["features"]["max_frames"]
    if mf is not None and (not isinstance(mf, int) or mf < 1):
        raise ConfigError(f"config: features.max_frames must be a positive integer or null, got {mf!r}")
    for k in ("epochs", "batch_size", "patience"):
        if not isinstance(cfg["train"][k], int) or cfg["train"][k] <= 0:
            raise ConfigError(f"config: train.{k} must be a positive integer, got {cfg['train'][k]!r}")
    for k in ("lr", "weight_decay"):
        cfg["train"][k] = _number(cfg["train"][k], f"train.{k}")
    if not (math.isfinite(cfg["train"]["lr"]) and cfg["train"]["lr"] > 0):
        raise ConfigError(f"config: train.lr must be a finite number > 0, got {cfg['train']['lr']!r}")
    if not (math.isfinite(cfg["train"]["weight_decay"]) and cfg["train"]["weight_decay"] >= 0):
        raise ConfigError("config: train.weight_decay must be a finite number >= 0, "
                          f"got {cfg['train']['weight_decay']!r}")
    for dotted, (kind, optional) in NUMERIC.items():
        if dotted.startswith("encoder.") and not isinstance(cfg["encoder"], dict):
            continue
        v = get(cfg, dotted)
        if v is None and optional:
            continue
        try:
            if isinstance(v, bool):
                raise TypeError
            x = float(v)
            ok = x.is_integer() if kind is int else math.isfinite(x)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"config: {dotted} must be {'an integer' if kind is int else 'a finite number'}, "
                              f"got {v!r}")
    _check_ranges(cfg)
    threads = cfg["train"]["threads"]
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"config: train.threads must be 'auto' or an integer >= 1, got {threads!r}")
    if int(cfg["train"]["group_by_length"] or 0) < 0:
        raise ConfigError(f"config: train.group_by_length must be 0 (off) or a number of batches per sorted group, "
                          f"got {cfg['train']['group_by_length']!r}")
    if "name" not in cfg["model"]:
        raise ConfigError("config: model.name is required")
    if cfg["objective"] is None:
        cfg["objective"] = [{"name": "cross_entropy"}] if cfg["task"] == "classification" else [{"name": "ccc"}]
    for i, term in enumerate(cfg["objective"]):
        if not isinstance(term, dict) or "name" not in term:
            raise ConfigError(f"config: objective[{i}] must be a mapping with a 'name', got {term!r}")
    _check_select(cfg)
    if cfg["train"]["monitor"] == "auto":
        cfg["train"]["monitor"] = "val_ua" if cfg["task"] == "classification" else "val_ccc_mean"
    from serkit.options import resolve

    resolve(cfg)  # every section type-checked once (serkit.options.resolve gives the typed view)
    return cfg


#: Settings that must be positive (> 0) once their type is known.
POSITIVE = ("train.lr_decay", "train.eval_batch_size", "predict.window_seconds", "predict.hop_seconds",
            "encoder.batch_seconds")


def _walk(node, path: str):
    """``(dotted key, value)`` of every entry below ``node`` (mappings and lists)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{path}.{k}"
        yield key, v
        yield from _walk(v, key)


def _check_ranges(cfg: dict) -> None:
    """Values of the right type but outside their range, refused before any work, naming the key: positive
    settings, dropout rates in [0, 1), protocol counts and fractions, an empty class set."""
    for dotted in POSITIVE:
        v = None if dotted.startswith("encoder.") and not isinstance(cfg["encoder"], dict) else get(cfg, dotted)
        if v is not None and not float(v) > 0:
            raise ConfigError(f"config: {dotted} must be > 0, got {v!r}")
    if int(cfg["train"]["min_epochs"]) < 0:
        raise ConfigError(f"config: train.min_epochs must be >= 0, got {cfg['train']['min_epochs']!r}")
    for section in ("model", "recipe_options", "augment"):
        for key, v in _walk(cfg.get(section) or {}, section):
            rate = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
            if key.rsplit(".", 1)[-1].endswith("dropout") and v is not None and not rate:
                raise ConfigError(f"config: {key} must be a rate in [0, 1), got {v!r}")
    protocol = cfg.get("protocol") or {}
    counts = {"val_speakers": 0, "k": 2}
    for key, least in counts.items():
        v = protocol.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v)
                              or int(v) < least):
            raise ConfigError(f"config: protocol.{key} must be an integer >= {least}, got {v!r}")
    for key in ("val_fraction", "test_fraction", "val_min_share"):
        v = protocol.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            raise ConfigError(f"config: protocol.{key} must be a fraction in [0, 1), got {v!r}")
    class_set = cfg.get("class_set")
    if class_set is not None and not class_set:
        raise ConfigError(f"config: class_set {class_set!r} is empty (it would keep every class); name a class set "
                          f"or map at least one class, or leave it out")


def _number(value, key: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config: {key} must be a number, got {value!r}") from None


def parse_yaml(text: str, where: str):
    """``yaml.safe_load(text)``; a syntax error is a ConfigError naming ``where`` (a file, an assignment) and the
    line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


def default_normalize(cfg: dict) -> str:
    """``features.normalize`` when a config leaves it out: the corpus reader's ``default_normalize`` (``auto`` for
    the user layouts ``csv`` and ``folder``, ``none`` for the published corpora) on cached features, else none."""
    if cfg["features"]["source"] != "cache" or not isinstance(cfg.get("corpus"), str):
        return "none"
    from serkit.corpora import get_reader

    return get_reader(cfg["corpus"]).default_normalize


def _check_select(cfg: dict) -> None:
    """``train.select``: ``{dotted.key: [values...]}`` chosen per fold on validation (serkit.train.select)."""
    sel = cfg["train"].get("select")
    if sel is None:
        return
    if not isinstance(sel, dict) or not sel:
        raise ConfigError(f"config: train.select must be a mapping of config keys to lists of values, got {sel!r}")
    for key, values in sel.items():
        head = str(key).split(".")[0]
        if head not in ("train", "model", "features", "objective") or "." not in str(key):
            raise ConfigError(f"config: train.select key {key!r} must name a train./model./features. option")
        if key in ("train.select", "train.seed", "train.monitor"):
            raise ConfigError(f"config: train.select cannot choose {key!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config: train.select.{key} must be a non-empty list, got {values!r}")
    if cfg["features"]["normalize"] == "auto" and "features.normalize" in sel:
        raise ConfigError("config: features.normalize: auto already chooses features.normalize; "
                          "drop it from train.select")


def get(cfg: dict, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def apply_override(cfg: dict, assignment: str) -> dict:
    """``key.sub=value`` with ``value`` parsed as YAML (numbers, lists, mappings, booleans)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    dotted, raw = assignment.split("=", 1)
    value = parse_yaml(raw, f"--set {assignment}")
    parts = dotted.strip().split(".")
    if parts[0] not in DEFAULTS:
        raise ConfigError(f"--set {dotted}: unknown key {parts[0]!r}; known top-level keys: {sorted(DEFAULTS)}")
    cur = cfg
    for i, p in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(cur, list):
            if not (p.isdigit() and int(p) < len(cur)):
                raise ConfigError(f"--set {dotted}: {where} is a list of {len(cur)}; {p!r} is not an index in it "
                                  f"(0..{len(cur) - 1})")
            p = int(p)
        elif not isinstance(cur, dict):
            raise ConfigError(f"--set {dotted}: {where} is {type(cur).__name__} {cur!r}, not a mapping or list")
        if i == len(parts) - 1:
            cur[p] = value
        else:
            if isinstance(cur, dict) and cur.get(p) is None:
                cur[p] = {}
            cur = cur[p]
    return cfg


def load_config(path: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """Read a YAML config (or take a dict), merge it over :data:`DEFAULTS`, apply overrides, validate."""
    if isinstance(path, dict):
        raw = path
        source = "<dict>"
    else:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} not found")
        raw = parse_yaml(p.read_text(), str(p)) or {}
        source = str(p)
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a config must be a YAML mapping")
        base = raw.pop("extends", None)
        if base:
            parent = load_config_raw(p.parent / base, (p.resolve(),))
            raw = _merge(parent, raw) if parent else raw
    cfg = _merge(DEFAULTS, _move_deprecated(raw, source))
    for o in overrides or []:
        cfg = apply_override(cfg, o)
    cfg = _move_deprecated(cfg, source)
    return validate(cfg)


def load_config_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of config ``path`` merged over the configs it ``extends``; ``chain``: the resolved paths
    that extend it, so a cycle is a ConfigError naming the files in order."""
    if not Path(path).exists():
        raise ConfigError(f"config file {path} not found (named by 'extends')")
    here = Path(path).resolve()
    if here in chain:
        raise ConfigError(f"config: 'extends' loops: {' -> '.join(str(c) for c in (*chain, here))}")
    raw = parse_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    base = raw.pop("extends", None)
    if base:
        parent = load_config_raw(Path(path).parent / base, (*chain, here))
        return _merge(parent, raw) if parent else raw
    return raw


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
