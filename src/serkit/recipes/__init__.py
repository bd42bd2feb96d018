"""Recipes: compositions of library blocks (models, losses, augmentations) registered by name.

:mod:`serkit.recipes.catalog` imports every recipe module and looks recipes up by name.
"""

from serkit.recipes.catalog import get_recipe, registered_recipes

__all__ = ["get_recipe", "registered_recipes"]
