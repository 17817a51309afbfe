"""The package layout: every module imports on its own, and no import circle hides inside ``pruning/``.

The circle check walks the ``ast`` of every module, top-level imports *and* imports inside functions: an import
moved into a function to dodge a circle still counts.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("prefect", "mlflow", "dvc", "optuna")


def modules_of(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of a package (``__init__`` names the package)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(module: str, path: Path) -> set[str]:
    """Every absolute name the file imports, anywhere in it (relative imports resolved): ``pkg.mod`` for
    ``import pkg.mod`` and ``from pkg import mod``, ``pkg.mod.name`` for ``from pkg.mod import name``."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports: an imported name resolves to the longest module name it starts
    with (``from pkg import mod`` -> ``pkg.mod``; ``from pkg.mod import f`` -> ``pkg.mod``)."""
    modules = modules_of(package)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as ``[a, b, ..., a]``, or ``[]`` (depth-first search over the import edges)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def fake_packages(root: Path, monkeypatch, **packages: dict) -> None:
    """Packages under ``root`` (``name={module: source}``, each with an empty ``__init__``), and ROOT pointed there."""
    for name, files in packages.items():
        (root / name).mkdir()
        for module, source in {"__init__": "", **files}.items():
            (root / name / f"{module}.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)


def test_find_cycle_finds_a_circle_through_a_function_level_import(tmp_path, monkeypatch):
    fake_packages(tmp_path, monkeypatch, pkg={"a": "from .b import f\n", "b": "def f():\n    from . import a\n"})
    assert find_cycle(import_graph("pkg")) == ["pkg.a", "pkg.b", "pkg.a"]


def test_pruning_has_no_import_circle():
    cycle = find_cycle(import_graph("pruning"))
    assert not cycle, "import circle in pruning/: " + " -> ".join(cycle)


def test_flows_has_no_import_circle():
    cycle = find_cycle(import_graph("flows"))
    assert not cycle, "import circle in flows/: " + " -> ".join(cycle)


def private_uses(package: str) -> list[str]:
    """``module: name`` for every private name (``_x``) of another project module a module imports or reads:
    ``from .m import _x`` and ``m._x`` where ``m`` is a project module it imported."""
    found = []
    project = set(modules_of("pruning")) | set(modules_of("flows"))
    for module, path in modules_of(package).items():
        tree = ast.parse(path.read_text(), str(path))
        imported_modules = {}
        for name in imported_names(module, path):
            base, _, leaf = name.rpartition(".")
            if name in project:
                imported_modules[leaf] = name
            elif base in project and base != module and leaf.startswith("_") and not leaf.startswith("__"):
                found.append(f"{module}: {name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{module}: {imported_modules[node.value.id]}.{node.attr}")
    return sorted(set(found))


@pytest.mark.parametrize("package", ["pruning", "flows"])
def test_no_module_uses_another_modules_private_names(package):
    assert private_uses(package) == []


def test_private_uses_finds_both_forms(tmp_path, monkeypatch):
    fake_packages(tmp_path, monkeypatch, pruning={},
                  flows={"a": "_secret = 1\n", "b": "from .a import _secret\nfrom . import a\nx = a._secret\n"})
    assert private_uses("flows") == ["flows.b: flows.a._secret"]


def test_pruning_imports_no_orchestration():
    for module, path in modules_of("pruning").items():
        used = {name.split(".")[0] for name in imported_names(module, path)}
        assert not used & set(ORCHESTRATION), f"{module} imports {sorted(used & set(ORCHESTRATION))}"


# Imported once before the forks: third-party libraries only, so each forked child starts with none of the
# project's modules loaded (what "on its own" is about) without paying torch's and Prefect's import every time.
THIRD_PARTY = ("numpy", "torch", "torchvision", "torch_pruning", "pydantic", "yaml", "rich", "typer", "prefect",
               "mlflow", "optuna")
FORK_EACH = """
import importlib, os, sys
for lib in sys.argv[1].split(","):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] in ("pruning", "flows")], "a project module was preloaded"
for module in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException as e:
            print(f"{module}: {type(e).__name__}: {e}", flush=True)
            os._exit(1)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_every_module_imports_on_its_own():
    """Each module imported in a child that has imported none of the project before it: an import order that only
    works after another module was imported first fails here."""
    modules = sorted(modules_of("pruning")) + sorted(modules_of("flows"))
    done = subprocess.run([sys.executable, "-c", FORK_EACH, ",".join(THIRD_PARTY), *modules], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not done.stdout.strip(), "modules that fail to import alone:\n" + done.stdout


def test_families_register_themselves_and_a_duplicate_name_raises():
    import pruning
    from pruning.models import is_known_model, register_family, register_model
    names = pruning.list_models()
    assert {"resnet20", "resnet56", "resnet18", "resnet50", "vgg19", "yolov8n", "yolov8s", "yolov8m"} <= set(names)
    assert "timm/<name>" in names  # the pattern of a family, not a buildable name
    assert all(is_known_model(n) for n in ("resnet20", "yolov8s", "timm/resnet18")) and not is_known_model("resnet21")
    for register, name in ((register_model, "resnet20"), (register_model, "timm/resnet18"),
                           (lambda prefix: register_family(prefix, prefix + "<name>"), "timm/")):
        with pytest.raises(ValueError, match="registered twice"):
            register(name)(lambda **_: None)
    assert pruning.list_models() == names
