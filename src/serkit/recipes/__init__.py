"""Recipes: compositions of library blocks (models, losses, augmentations) registered by name.

Importing this package imports every recipe module so that their models register themselves.
"""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
