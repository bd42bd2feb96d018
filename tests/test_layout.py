"""Blocks below recipes: the import rules of docs/developing.md, checked on the source."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "serkit"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_blocks_never_import_recipes():
    for folder in ("models", "losses"):
        for p in (SRC / folder).rglob("*.py"):
            assert not any(m.startswith("serkit.recipes") for m, _ in _imports(p)), p


def test_recipes_never_import_private_names_of_train():
    for p in (SRC / "recipes").rglob("*.py"):
        for module, names in _imports(p):
            if module.startswith("serkit.train"):
                assert not [n for n in names if n.startswith("_")], (p, module, names)
                assert not any(part.startswith("_") for part in module.split(".")), (p, module)


def test_report_and_cv_do_not_import_each_other():
    assert not any(m == "serkit.train.cv" for m, _ in _imports(SRC / "report.py"))
    cv = _imports(SRC / "train" / "cv.py")
    assert any(m == "serkit.report" for m, _ in cv)  # one direction only
