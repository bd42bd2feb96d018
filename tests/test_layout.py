"""The architecture rules of docs/developing.md, checked on the source: blocks below recipes, an import graph without
circles (every import counts, function-local ones included), modules and functions of a readable size."""

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


#: The library blocks (docs/developing.md's picture) and what sits above them: a block imports none of it.
BLOCKS = ("data", "features", "encoders", "models", "losses", "augment", "corpora", "protocols.py", "config.py",
          "config_defaults.py", "io.py", "audio.py", "errors.py", "precision.py")
ABOVE_BLOCKS = ("serkit.recipes", "serkit.train", "serkit.inference", "serkit.service", "serkit.export",
                "serkit.cli", "serkit.ablation", "serkit.results_page", "serkit.report", "serkit.stream")


def test_blocks_never_import_recipes_the_runner_or_the_apps():
    for block in BLOCKS:
        paths = [SRC / block] if block.endswith(".py") else (SRC / block).rglob("*.py")
        for p in paths:
            if p.parent.name == "features" and p.name == "cli.py":
                continue  # serkit extract: the feature store's own command
            bad = [m for m, _ in _imports(p) if m.startswith(ABOVE_BLOCKS)]
            assert not bad, (p, bad)


def test_recipes_never_import_private_names_of_train():
    for p in (SRC / "recipes").rglob("*.py"):
        for module, names in _imports(p):
            if module.startswith("serkit.train"):
                assert not [n for n in names if n.startswith("_")], (p, module, names)
                assert not any(part.startswith("_") for part in module.split(".")), (p, module)


#: The project's limits: lines per module and per function (``def`` line to last line).
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules of serkit it imports}`` over every ``import`` statement of every module, at any depth
    (function-local imports too); ``from package import name`` points at ``package.name`` when that is a module,
    and a string that is exactly a module's name (``importlib.import_module("serkit.x")``, a table of lazy
    commands) is an edge too. A module whose import runs a package's ``__init__`` only through the import system is
    not an edge: the edges are what the code names."""
    modules = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("serkit."):
                targets.add(node.value)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 200  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_discovers_modules_at_run_time():
    """Registries import their modules by name (a catalog module), so the import graph shows every edge."""
    for path in SRC.rglob("*.py"):
        assert "pkgutil" not in path.read_text(), path


def test_the_cycle_finder_finds_a_circle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "serkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from serkit.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from serkit import c\n")
    (pkg / "c.py").write_text("import importlib\n\nimportlib.import_module('serkit.a')\n")  # a lazy import by name
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and set(cycle) == {"serkit.a", "serkit.sub.b", "serkit.c"}
    (pkg / "c.py").write_text("import serkit.sub\n")
    assert find_cycle(import_graph(pkg)) is None


def test_modules_and_functions_stay_readable():
    """No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES (docstring included)."""
    long_modules, long_functions = [], []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def _config_keys(defaults: dict) -> set[str]:
    """Every key of ``defaults`` at any depth (section names and their keys)."""
    keys = set()
    for key, value in defaults.items():
        keys.add(key)
        if isinstance(value, dict):
            keys |= _config_keys(value)
    return keys


def _written_out(node: ast.expr) -> bool:
    """A default typed as a value: a literal other than None and other than an empty list / tuple / dict / set."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return False
    return value is not None and not (isinstance(value, (list, tuple, dict, set)) and not value)


def restated_defaults(src: Path = SRC) -> list[tuple[str, int, str]]:
    """``(file relative to src, line, key)`` of every ``x.get(KEY, LITERAL)`` outside ``config_defaults.py`` whose
    KEY is a key of :data:`serkit.config_defaults.DEFAULTS` (any depth) and LITERAL a value typed in place."""
    from serkit.config_defaults import DEFAULTS

    keys = _config_keys(DEFAULTS)
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "config_defaults.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in keys and _written_out(node.args[1])):
                found.append((path.relative_to(src).as_posix(), node.lineno, node.args[0].value))
    return found


#: ``(file, key)`` whose ``.get(KEY, LITERAL)`` reads something other than a config setting of that name.
RESTATED_DEFAULT_ALLOWED = {
    ("ablation/run.py", "name"),  # a protocol's name in a sentence: no protocol reads "the corpus default"
    ("results_page.py", "mode"),  # results.json fields: a fold's normalisation record, encoder.finetune's mode
    ("results_page.py", "name"),  # a summary's protocol name on the page: "?" where the summary has none
}


def test_config_defaults_live_in_one_source():
    """No module restates a config default (``cfg.get("threads", "auto")``): a resolved config is indexed, a file
    serkit wrote falls back on :mod:`serkit.config_defaults` or the options class that owns the default."""
    found = restated_defaults()
    assert [f"{f}:{line} .get({key!r}, ...)" for f, line, key in found if (f, key) not in RESTATED_DEFAULT_ALLOWED] \
        == []
    assert RESTATED_DEFAULT_ALLOWED <= {(f, key) for f, _, key in found}  # no allowance outlives its reason


def test_the_default_scan_finds_a_restated_default(tmp_path):
    pkg = tmp_path / "serkit"
    pkg.mkdir()
    (pkg / "config_defaults.py").write_text('X = {}.get("threads", "auto")\n')  # the one source may spell them
    (pkg / "a.py").write_text('def f(cfg, DEFAULTS):\n'
                              '    a = cfg["train"].get("threads", "auto")\n'
                              '    b = cfg.get("precision", {"features": "fp32"})\n'
                              '    c = cfg.get("mode", DEFAULTS["encoder"]["mode"])\n'
                              '    d = cfg.get("select", None), cfg.get("recipe_options", {}), cfg.get("no_key", 1)\n'
                              '    return a, b, c, d\n')
    assert restated_defaults(pkg) == [("a.py", 2, "threads"), ("a.py", 3, "precision")]
