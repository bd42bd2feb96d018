"""The catalog of recipes: imports every recipe module (each registers itself) and looks recipes up by name."""

from __future__ import annotations

import serkit.recipes.gmp_atl
import serkit.recipes.hcld
import serkit.recipes.if_mvse
import serkit.recipes.mll  # noqa: F401
from serkit.errors import ConfigError
from serkit.recipes.base import _RECIPES, Recipe


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise ConfigError(f"recipe={name!r} is unknown; known: {sorted(_RECIPES)}")
    return _RECIPES[name]()


def registered_recipes() -> list[str]:
    """Names of every registered recipe."""
    return sorted(_RECIPES)
