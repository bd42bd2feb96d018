"""Packaging: ranges in pyproject, exact pins in constraints.txt."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO


def test_dependencies_are_ranges_and_constraints_pin_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    assert not [d for d in declared if "==" in d], "pyproject declares ranges; exact pins live in constraints.txt"
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    # everything the set-up script installs has its exact version there
    for extra in ("train", "dev", "text", "recipes", "export", "serve"):
        declared_extra = project["optional-dependencies"][extra]
        for d in project["dependencies"] + declared_extra:
            name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", d)[0]).lower()
            assert name in pins, f"{name} ({extra}) has no exact pin in constraints.txt"
