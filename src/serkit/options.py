"""Typed options: a config section (a mapping) resolved once into a dataclass, unknown keys named.

A recipe declares its ``recipe_options`` as a dataclass (``Recipe.options_class``); nested dataclass fields take
nested mappings, merged over their defaults. ``parse_options(GMPOptions, cfg["recipe_options"], "recipe_options")``
returns the instance or raises :class:`~serkit.errors.ConfigError` naming the unknown or mistyped key.
"""

from __future__ import annotations

import dataclasses
import typing

from serkit.config_defaults import DEFAULTS
from serkit.errors import ConfigError


def parse_options(cls: type, raw: dict | None, where: str):
    """``raw`` as an instance of the dataclass ``cls``; nested dataclass fields from nested mappings."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for name, value in raw.items():
        typ = hints.get(name)
        if dataclasses.is_dataclass(typ):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
            kw[name] = parse_options(typ, value, f"{where}.{name}")
        else:
            kw[name] = _check_type(value, typ, f"{where}.{name}")
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_type(value, typ, where: str):
    """Light checks: numbers for float / int fields (ints accepted as floats), booleans for bool fields; None is
    accepted where the default is not a number."""
    if value is None and typ in (float, int):
        return value
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is float and not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value


def as_dict(options) -> dict:
    """A (nested) options dataclass as a plain dict (for stage keys and results)."""
    return dataclasses.asdict(options)


# -- the config's sections as typed, frozen objects (built from serkit.config_defaults: one source of defaults) -----
def _field_type(default):
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return typing.Any


def section_class(name: str, defaults: dict) -> type:
    """A frozen dataclass for one config section whose fields and defaults are ``defaults``' (numbers and booleans
    typed, checked on construction by :func:`parse_options`; other values as given)."""
    fields = [(k, _field_type(v), dataclasses.field(default_factory=lambda v=v: v)) for k, v in defaults.items()]
    return dataclasses.make_dataclass(f"{name.title().replace('_', '')}Options", fields, frozen=True)


@dataclasses.dataclass(frozen=True)
class ExperimentOptions:
    """``load_config``'s dict resolved once: ``train``, ``features``, ``predict`` and (one view) ``encoder`` sections
    as typed objects; ``raw`` is the dict itself (for modules that read the raw config)."""

    train: typing.Any
    features: typing.Any
    predict: typing.Any
    encoder: typing.Any
    raw: dict


def resolve(cfg: dict) -> ExperimentOptions:
    """Typed sections of a loaded config; a value of the wrong type is a :class:`ConfigError` naming its key."""
    sections = {}
    for name in ("train", "features", "predict", "encoder"):
        value = cfg[name]
        if name == "encoder" and isinstance(value, list):
            value = value[0] if value else {}
        defaults = dict(DEFAULTS[name])
        extra = {k: v for k, v in value.items() if k not in defaults}
        cls = section_class(name, {**defaults, **{k: None for k in extra}})
        sections[name] = parse_options(cls, value, name)
    return ExperimentOptions(raw=cfg, **sections)
