"""The packages as layers (docs/architecture.md): who may import whom, and no import cycles.

Imports are read with `ast` from every file, including imports inside functions and
`if TYPE_CHECKING:` blocks: a cycle hidden in a function is still a cycle between two files.
The checks are first shown to catch a planted upward import and a planted cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from chaosbed import exits
from slos import gate

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top: a package may import itself and the packages before it, never one after it.
LAYERS = (
    "rundir",
    "services",
    "faults",
    "loadtests",
    "slos",
    "dashboards",
    "chaosbed",
    "benchmarks",
    "examples",  # user code (example targets): their adapters import only loadtests
)
BELOW_CHAOSBED = ("slos", "loadtests", "faults", "services", "dashboards", "rundir")

Graph = dict[str, set[str]]


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under `root`."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _target(name: str, modules: Mapping[str, Path]) -> str | None:
    """The most specific module of ours that `name` denotes (a.b.c -> a.b if c is a function)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Module -> the modules of ours it imports (anywhere in the file)."""
    modules = module_files(root, packages)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the file's own package upwards
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the module pkg.mod when there is one
                names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for imported in names:
                target = _target(imported, modules)
                if target is not None and target != name:
                    graph[name].add(target)
    return graph


def upward_imports(graph: Graph, layers: tuple[str, ...]) -> list[str]:
    """`a -> b` for every import of a package from a higher layer (or outside the layers)."""
    rank = {package: index for index, package in enumerate(layers)}
    wrong = []
    for module, targets in sorted(graph.items()):
        own = rank[module.split(".")[0]]
        for target in sorted(targets):
            if rank.get(target.split(".")[0], len(layers)) > own:
                wrong.append(f"{module} -> {target}")
    return wrong


def imports_of(graph: Graph, packages: Iterable[str], forbidden: str) -> list[str]:
    """`a -> b` for every module of `packages` that imports `forbidden` or one of its modules."""
    wanted = tuple(packages)
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        if module.split(".")[0] in wanted
        for target in sorted(targets)
        if target.split(".")[0] == forbidden
    ]


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as a path `[a, b, ..., a]`, or None when the graph has none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


# --- the checks, proven on a planted tree ------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "rundir/__init__.py": "import json\n",
    "slos/__init__.py": "",
    "slos/result.py": "from rundir import write_json\n",
    "slos/gate.py": "from .result import GateResult\nfrom slos import report\n",
    "slos/report.py": "from slos.result import GateResult\n",
    "chaosbed/__init__.py": "",
    "chaosbed/commands.py": "def cmd_check():\n    from slos.gate import evaluate\n",
}


def test_the_checks_pass_a_clean_tree(tmp_path: Path) -> None:
    graph = import_graph(_tree(tmp_path, CLEAN), ("rundir", "slos", "chaosbed"))
    assert graph["slos.gate"] == {"slos.result", "slos.report"}
    assert graph["chaosbed.commands"] == {"slos.gate"}  # a function's import counts
    assert find_cycle(graph) is None
    assert upward_imports(graph, LAYERS) == []
    assert imports_of(graph, BELOW_CHAOSBED, "chaosbed") == []


def test_the_checks_catch_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    planted = {
        **CLEAN,
        "slos/report.py": "def render():\n    from slos.gate import GateResult\n",
    }
    graph = import_graph(_tree(tmp_path, planted), ("rundir", "slos", "chaosbed"))
    assert find_cycle(graph) == ["slos.gate", "slos.report", "slos.gate"]


def test_the_checks_catch_a_lower_layer_importing_the_orchestrator(tmp_path: Path) -> None:
    planted = {
        **CLEAN,
        "slos/result.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from chaosbed.commands import cmd_check\n",
        "rundir/__init__.py": "import slos.result\n",
    }
    graph = import_graph(_tree(tmp_path, planted), ("rundir", "slos", "chaosbed"))
    assert imports_of(graph, BELOW_CHAOSBED, "chaosbed") == ["slos.result -> chaosbed.commands"]
    assert upward_imports(graph, LAYERS) == [
        "rundir -> slos.result",
        "slos.result -> chaosbed.commands",
    ]


# --- the real tree -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, LAYERS)


def test_every_package_is_in_a_layer() -> None:
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert ours - {"tests"} == set(LAYERS)


def test_nothing_below_the_orchestrator_imports_chaosbed(graph: Graph) -> None:
    assert imports_of(graph, BELOW_CHAOSBED, "chaosbed") == []


def test_every_import_goes_down_the_layers(graph: Graph) -> None:
    assert upward_imports(graph, LAYERS) == []


def test_there_is_no_import_cycle(graph: Graph) -> None:
    assert find_cycle(graph) is None


def test_the_examples_import_only_the_adapter_protocol(graph: Graph) -> None:
    ours = [m for m in graph if m.split(".")[0] == "examples"]
    assert "examples.shop.adapter" in ours
    for forbidden in set(LAYERS) - {"examples", "loadtests"}:
        assert imports_of(graph, ("examples",), forbidden) == []
    # the example service itself is standalone: not even the adapter protocol
    assert graph["examples.shop.shop"] == set()
    assert graph["examples.shop.adapter"] == {"loadtests.adapter"}


def test_the_gate_and_the_command_line_agree_on_exit_codes() -> None:
    assert (gate.EXIT_PASS, gate.EXIT_FAIL, gate.EXIT_UNKNOWN, gate.EXIT_HARNESS) == (
        exits.EXIT_PASS,
        exits.EXIT_FAIL,
        exits.EXIT_UNKNOWN,
        exits.EXIT_HARNESS,
    )
