"""Every dependency runs downward: a module imports modules of its own unit (a package of `codaar`,
`codaar_kernels`, `tests`, ...) and of the layers below its own, never a layer above or beside it;
and no chain of imports leads from a module back to itself. Every import counts: at module level,
inside functions, relative ones, and the modules `lazy_exports` imports on first use. The README's
"Layout" table shows the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"codaar": "codaar", "codaar_kernels": "kernels", "tests": "tests", "bench": "bench", "profiles": "profiles"}

# Bottom to top, numbered as in the README's table. A unit may import the units of the layers
# before its own; units of one layer do not import each other.
LAYERS = (
    ("codaar_kernels",),  # 1: the math of one quantizer step
    ("codaar.runtime",),  # 2: processes, seeds, locks, profiler ranges, lazy exports
    ("codaar.settings", "codaar.run_folder"),  # 3: how settings are declared; the run folder's files
    ("codaar.quantizer_config",),  # 4
    ("codaar.quantizer",),  # 4, then
    ("codaar",),  # 4, then: the package itself, the quantizer's names
    ("codaar.data", "codaar.model"),  # 5
    ("codaar.pretrained",),  # 6: a trained model and its data, for the programs that read one
    ("codaar.train", "codaar.evaluate", "codaar.encode"),  # 7: the programs
    ("codaar.ablate",),  # 8: trains and evaluates
    ("tests",),  # 9
    ("bench",),  # 9, then: reuses the tests' formulations
    ("profiles",),  # 9, then: reuses the benchmarks' contestants
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """`codaar.<x>` for codaar's modules (and `codaar` for the package itself), else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "codaar" else parts[0]


def module_files() -> dict[str, Path]:
    modules = {}
    for top, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join((top, *parts[:-1]) if parts[-1] == "__init__" else (top, *parts))] = path
    return modules


def imports_of(module: str, source: str, known: set[str], is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a project module in `source`, wherever it stands;
    `from package import name` imports the module `package.name` if there is one, else `package`."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot after the first
                base = ".".join(filter(None, (package.rsplit(".", node.level - 1)[0], base)))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((name if name in known else base, node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            found += [(target, node.lineno) for target in _lazy_targets(tree, node.args[1])]
    return list(dict.fromkeys((target, line) for target, line in found if target.split(".")[0] in FOLDERS))


def _lazy_targets(tree: ast.Module, names: ast.expr) -> list[str]:
    """The module paths of a `lazy_exports(package, {name: module})` call (a dict literal, or a
    module-level name bound to one)."""
    if isinstance(names, ast.Name):
        bound = [n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) == names.id for t in n.targets)]
        names = bound[0] if bound else names
    assert isinstance(names, ast.Dict), "lazy_exports takes a dict literal (or a name bound to one)"
    return [value.value for value in names.values]


def path_hacks(files: dict[str, Path]) -> list[str]:
    """Imports that only work with a folder put on sys.path: a helper imported by its bare name
    (`from golden_cases import ...` instead of `from tests.golden_cases import ...`), and the
    `sys.path.insert`/`append` calls that make them work."""
    bare = {m.rpartition(".")[2] for m in files if unit_of(m) in ("tests", "bench", "profiles") and "." in m}
    problems = []
    for path in files.values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            problems += [f"{path}:{node.lineno}: imports {name} by its bare name" for name in names
                         if name.split(".")[0] in bare]
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append") and \
                    ast.unparse(node.value) == "sys.path":
                problems.append(f"{path}:{node.lineno}: changes sys.path")
    return problems


def upward_imports(graph: dict[str, list[tuple[str, int]]], files: dict[str, Path]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        unit = unit_of(module)
        if unit not in LAYER:
            problems.append(f"{files[module]}: unit {unit} is in no layer (add it to LAYERS and the README's table)")
            continue
        for target, line in targets:
            other = unit_of(target)
            if other != unit and LAYER.get(other, len(LAYERS)) >= LAYER[unit]:
                where = "beside" if LAYER.get(other) == LAYER[unit] else "above"
                problems.append(f"{files[module]}:{line}: {module} imports {target}, a layer {where} {unit}'s")
    return problems


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The import cycles between modules: each strongly connected group of two or more (Tarjan)."""
    edges = {m: sorted({t for t, _ in targets if t in graph and t != m}) for m, targets in graph.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for t in edges[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in on_stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            group = []
            while not group or group[-1] != m:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for m in edges:
        if m not in index:
            visit(m)
    return groups


def project_graph() -> tuple[dict[str, list[tuple[str, int]]], dict[str, Path]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, path.read_text(), known, path.name == "__init__.py") for m, path in files.items()}, files


def test_every_import_runs_downward_and_none_in_a_cycle():
    graph, files = project_graph()
    assert sum(map(len, graph.values())) > 300, "the import scan found too few imports"
    assert upward_imports(graph, files) == []
    assert cycles(graph) == []
    assert path_hacks(files) == []


def test_the_kernels_import_nothing_of_codaar():
    graph, _ = project_graph()
    kernel_imports = [t for m, targets in graph.items() if m.startswith("codaar_kernels") for t, _ in targets]
    assert kernel_imports and all(t.startswith("codaar_kernels") for t in kernel_imports)


def test_the_checker_sees_a_folder_put_on_sys_path(tmp_path):
    helper, test = tmp_path / "golden_cases.py", tmp_path / "test_x.py"
    helper.write_text("")
    test.write_text("import sys\n\nsys.path.insert(0, 'tests')\nfrom golden_cases import NAMES\n"
                    "import tests.golden_cases\n")
    problems = path_hacks({"tests.golden_cases": helper, "tests.test_x": test})
    assert sorted(problems) == [f"{test}:3: changes sys.path", f"{test}:4: imports golden_cases by its bare name"]


def test_the_checker_sees_every_kind_of_import():
    known = {"codaar", "codaar.runtime", "codaar.runtime.distributed", "codaar.settings", "codaar.train",
             "codaar.train.loop", "codaar.evaluate", "codaar.evaluate.run", "codaar.evaluate.features"}
    files = {m: Path(m.replace(".", "/") + ".py") for m in known}
    graph = {
        # a plain import and a function-local one, both of layers above
        "codaar.runtime.distributed": imports_of("codaar.runtime.distributed", (
            "import os\nimport codaar.settings\n\ndef f():\n    from codaar.train import loop\n"), known),
        # relative imports inside a package, and a lazy export of a sibling program
        "codaar.evaluate.run": imports_of("codaar.evaluate.run", (
            "from .features import x\nfrom . import features\n"
            "_LAZY = {'main': 'codaar.train.loop'}\n__getattr__ = lazy_exports(__name__, _LAZY)\n"), known),
        "codaar.evaluate.features": imports_of("codaar.evaluate.features", "from .run import y\n", known),
    }
    assert graph["codaar.runtime.distributed"] == [("codaar.settings", 2), ("codaar.train.loop", 5)]
    assert sorted(graph["codaar.evaluate.run"]) == [("codaar.evaluate.features", 1), ("codaar.evaluate.features", 2),
                                                    ("codaar.train.loop", 4)]
    problems = upward_imports(graph, files)
    assert len(problems) == 3 and ("distributed.py:2: codaar.runtime.distributed imports codaar.settings, a layer "
                                   "above codaar.runtime's") in problems[0]
    assert "imports codaar.train.loop, a layer above" in problems[1]
    assert "run.py:4: codaar.evaluate.run imports codaar.train.loop, a layer beside codaar.evaluate's" in problems[2]
    assert cycles(graph) == [["codaar.evaluate.features", "codaar.evaluate.run"]]
