"""The package's shape, checked: the layers exactly as docs/architecture.md draws them, no import cycles (function-local imports included, since they only hide a cycle),
the core never imports the test fixtures, `import vlsft` loads no fixture, and the modules inside vlsft/ shadow
nothing when `accelerate launch vlsft/train.py` puts that folder first on `sys.path`."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vlsft"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The vlsft modules a file imports anywhere in it (top level or inside functions): `from vlsft.a import b`
    counts as `vlsft.a.b` when that is a module, else as `vlsft.a`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vlsft"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlsft") and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_nothing_outside_the_fixtures_imports_them():
    """Recipes reach the tiny models and the demo data by name (`vlsft.recipes.registry`), never by import."""
    offenders = {
        name: sorted(target for target in targets if target.startswith("vlsft.testing"))
        for name, targets in GRAPH.items()
        if not name.startswith("vlsft.testing")
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


ARCHITECTURE_PAGE = REPO / "docs" / "architecture.md"
LAYER_LINE = re.compile(r"^(\w+):\s+(\S.*)$")


def drawn_layers(page: Path = ARCHITECTURE_PAGE) -> list[tuple[str, list[str]]]:
    """The layers as docs/architecture.md draws them, top layer first: the text block after the `layers:` comment,
    one `name: path path ...` line per layer (a path ending in `/` is a package with everything in it), continued
    on the next line when it is indented to the paths' column and holds paths only."""
    text = page.read_text()
    block = text[text.index("<!-- layers:") :]
    block = block[block.index("```text\n") + len("```text\n") :]
    block = block[: block.index("```")]
    layers: list[tuple[str, list[str]]] = []
    column = None
    for line in block.splitlines():
        match = LAYER_LINE.match(line)
        if match:
            column = match.start(2)
            layers.append((match.group(1), match.group(2).split()))
        elif layers and column and line[:column].strip() == "" and line[column:column + 1].strip():
            layers[-1][1].extend(line.split())  # a continuation of the paths (descriptions are indented deeper)
    return layers


def module_of_path(drawn: str) -> str:
    """`cli/` -> `vlsft.cli`, `data/rows.py` -> `vlsft.data.rows`, `__init__.py` -> `vlsft`."""
    parts = ["vlsft"] + [part for part in drawn.removesuffix(".py").strip("/").split("/") if part != "__init__"]
    return ".".join(parts)


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> list[str]:
    """The names of the layers a module is drawn in (a package path covers its modules)."""
    found = []
    for name, paths in layers:
        for drawn in paths:
            target = module_of_path(drawn)
            if module == target or (drawn.endswith("/") and module.startswith(target + ".")):
                found.append(name)
    return found


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Per module, the modules it imports from a layer above its own (layers listed top first)."""
    rank = {name: len(layers) - index for index, (name, _) in enumerate(layers)}  # the bottom layer is 1
    found = {}
    for module, targets in graph.items():
        own = layer_of(module, layers)
        if len(own) != 1:
            continue  # reported by the test that every module is drawn once
        above = sorted(
            target for target in targets
            if len(layer_of(target, layers)) == 1 and rank[layer_of(target, layers)[0]] > rank[own[0]]
        )
        if above:
            found[module] = above
    return found


LAYERS = drawn_layers()
DRAWN_MODULES = {name: targets for name, targets in GRAPH.items() if not name.startswith("vlsft.testing")}


def test_the_layer_check_finds_an_upward_import():
    layers = [("top", ["cli/"]), ("bottom", ["data/rows.py", "collator.py"])]
    graph = {"vlsft.cli.train": {"vlsft.collator"}, "vlsft.collator": {"vlsft.data.rows", "vlsft.cli.train"}}
    assert upward_imports(graph, layers) == {"vlsft.collator": ["vlsft.cli.train"]}
    assert module_of_path("__init__.py") == "vlsft" and module_of_path("data/rows.py") == "vlsft.data.rows"


def test_the_drawing_is_read():
    names = [name for name, _ in LAYERS]
    assert names == ["tools", "recipes", "training", "validation", "collation", "rows"], names
    assert "data/validation_report.py" in dict(LAYERS)["validation"]  # a continuation line


def test_every_module_is_drawn_in_exactly_one_layer():
    """A new module goes into the drawing in docs/architecture.md (and every path drawn names a module)."""
    misplaced = {name: layer_of(name, LAYERS) for name in DRAWN_MODULES if len(layer_of(name, LAYERS)) != 1}
    assert misplaced == {}, f"draw each of these in exactly one layer of docs/architecture.md: {misplaced}"
    drawn_nothing = [
        drawn for _, paths in LAYERS for drawn in paths
        if not any(name == module_of_path(drawn) or name.startswith(module_of_path(drawn) + ".") for name in GRAPH)
    ]
    assert drawn_nothing == []


def test_no_module_imports_from_a_layer_above_its_own():
    """The layers as drawn in docs/architecture.md, function-local imports included."""
    assert upward_imports(DRAWN_MODULES, LAYERS) == {}


def run_python(code: str, repo_on_path: bool = True) -> str:
    """Run `code` in a fresh interpreter outside the repository, with this checkout first on the path (or, with
    `repo_on_path=False`, without it), keeping any other PYTHONPATH entries (where dependencies may live)."""
    others = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry and Path(entry) != REPO]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(([str(REPO)] if repo_on_path else []) + others))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_vlsft_and_its_run_path_loads_no_fixture():
    out = run_python(
        "import sys, vlsft\n"
        "print(sorted(m for m in sys.modules if m.startswith('vlsft')))\n"
        "import vlsft.cli.train, vlsft.recipes.build, vlsft.recipes.plan, vlsft.trainer\n"
        "vlsft.VLSFTTrainer\n"
        "print(sorted(m for m in sys.modules if m.startswith('vlsft.testing')))\n"
    )
    first, run_path = out.strip().splitlines()
    assert "vlsft.testing" not in first and "vlsft.trainer" not in first  # the trainer (and TRL) load lazily
    assert run_path == "[]"


def test_modules_inside_the_package_shadow_nothing_when_it_is_launched_as_a_script():
    """`accelerate launch vlsft/train.py` runs a file inside the package, so Python puts vlsft/ first on sys.path:
    a module there named like another importable module (as `inspect.py` once was) would replace it."""
    names = sorted({entry.removesuffix(".py") for entry in os.listdir(PACKAGE) if not entry.startswith(("_", "."))})
    out = run_python(
        "import importlib.util\n"
        f"for name in {names!r}:\n"
        "    if importlib.util.find_spec(name) is not None:\n"
        "        print(name)\n",
        repo_on_path=False,  # the repository's own recipes/ and configs/ folders are not on a launched run's path
    )
    assert out.split() == []
