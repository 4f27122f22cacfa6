"""The architecture as a test: layers with arrows pointing one way, a pure core, no circles.

::

    cli                                        entry point (nothing imports it)
    dispatch  preflight  local  node  driver   orchestration
    report                                     (and a council's transcript, pure)
    council  llm  nats  submit                 mechanisms (council and llm.base are pure)
    errors reasons spec events addresses       the contract (pure), and exit_codes

A module may import modules of its own package and of lower layers only (the contract's modules
also each other); the one sideways arrow above it is ``council -> llm.base`` (the chat types
the protocol produces). Pure modules import no
I/O library. Imports under ``if TYPE_CHECKING:`` do not count (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: Top-level unit of swe_fleet (a subpackage or a top-level module) -> its layer.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        [
            "errors",
            "reasons",
            "exit_codes",
            "spec",
            "events",
            "addresses",
            "_logging",
            "_processes",
            "_tasks",
        ],
        0,
    ),
    **dict.fromkeys(["council", "llm", "nats", "submit"], 1),
    **dict.fromkeys(["dispatch", "preflight", "local", "node", "driver", "report"], 2),
    "cli": 3,
}
#: Sideways arrows allowed within a layer: (importer unit, imported module).
SIDEWAYS = {("council", "swe_fleet.llm.base")}
#: Modules that must stay pure: no I/O library, no swe_fleet I/O package.
PURE = (
    "errors", "reasons", "exit_codes", "spec", "events", "addresses", "_tasks",
    "council", "llm.base", "report",
)  # fmt: skip
#: Libraries (or their modules) that do I/O: network, processes, engines.
IO_LIBRARIES = (
    "nats", "ray", "vllm", "aiohttp", "requests", "httpx", "socket", "subprocess",
    "urllib.request", "http.client", "torch", "transformers", "psutil",
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. swe_fleet.nats.publisher
    target: str  # dotted module name (resolved to a module of the tree where it is one)
    line: int


def modules_of(root: Path) -> dict[str, Path]:
    """Every module under ``root/swe_fleet`` by dotted name (packages by their ``__init__``)."""
    found = {}
    for path in sorted((root / "swe_fleet").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(root: Path) -> list[Import]:
    """Every runtime import in the tree (module level and inside functions)."""
    modules = modules_of(root)
    found = []
    for name, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports the module pkg.mod when there is one.
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            found += [Import(name, t, node.lineno) for t in targets]  # type: ignore[attr-defined]
    return list(dict.fromkeys(found))  # `from m import a, b` is one arrow


def _unit(module: str) -> str:
    """``swe_fleet.nats.publisher`` -> ``nats``; ``swe_fleet`` -> ``""`` (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layering_violations(root: Path) -> list[str]:
    """Arrows that point up or sideways (one line each, naming both ends and the line)."""
    problems = []
    for imp in imports_of(root):
        if not _is_within(imp.target, "swe_fleet") or imp.importer == "swe_fleet":
            continue  # the package root re-exports the public API lazily
        src, dst = _unit(imp.importer), _unit(imp.target)
        if dst in ("", src):
            continue  # ``import swe_fleet`` (the version) or its own package
        if dst not in LAYERS or src not in LAYERS:
            problems.append(f"{imp.importer}:{imp.line}: {src or dst!r} is in no layer; add it to LAYERS")
            continue
        sideways = LAYERS[src] == 0 or any(src == a and _is_within(imp.target, b) for a, b in SIDEWAYS)
        if LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and not sideways):
            problems.append(
                f"{imp.importer}:{imp.line} imports {imp.target}: layer {LAYERS[src]} ({src}) must not "
                f"depend on layer {LAYERS[dst]} ({dst})"
            )
    return problems


def purity_violations(root: Path) -> list[str]:
    """I/O imports of the pure modules."""
    problems = []
    for imp in imports_of(root):
        if not any(_is_within(imp.importer, f"swe_fleet.{p}") for p in PURE):
            continue
        io_library = any(_is_within(imp.target, lib) for lib in IO_LIBRARIES)
        io_package = _is_within(imp.target, "swe_fleet") and not any(
            _is_within(imp.target, f"swe_fleet.{p}") for p in (*PURE, "_logging")
        )
        if io_library or (io_package and imp.target != "swe_fleet"):
            problems.append(f"{imp.importer}:{imp.line} imports {imp.target}: pure code does no I/O")
    return problems


def cli_importers(root: Path) -> list[str]:
    """Modules outside the CLI that import it."""
    return [
        f"{imp.importer}:{imp.line}"
        for imp in imports_of(root)
        if _is_within(imp.target, "swe_fleet.cli") and not _is_within(imp.importer, "swe_fleet.cli")
    ]


def import_cycles(root: Path) -> list[list[str]]:
    """Circles among the tree's modules (strongly connected components with more than one)."""
    graph: dict[str, set[str]] = {m: set() for m in modules_of(root)}
    for imp in imports_of(root):
        if imp.target in graph and imp.target != imp.importer and imp.importer != "swe_fleet":
            graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


# ---- the real tree -------------------------------------------------------------------------------


def test_every_arrow_points_down_the_layers():
    """No module imports a higher layer, or another package of its own layer (but council -> llm.base)."""
    assert layering_violations(SRC) == []


def test_the_pure_core_does_no_io():
    """spec, events, errors, addresses, exit_codes, council/ and llm.base import no I/O library."""
    assert purity_violations(SRC) == []


def test_nothing_imports_the_cli():
    """The CLI is an entry point: library code never depends on it."""
    assert cli_importers(SRC) == []


def test_there_are_no_import_circles():
    """No two modules import each other, directly or around a circle."""
    assert import_cycles(SRC) == []


def test_every_package_is_in_a_layer():
    """A new package or top-level module must be placed in a layer before it can be imported."""
    units = {_unit(m) for m in modules_of(SRC)} - {""}
    assert units - set(LAYERS) == set()


# ---- the checker itself notices ------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "swe_fleet" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in (tmp_path / "swe_fleet").rglob("*.py")}:
        (folder / "__init__.py").touch()
    return tmp_path


def test_an_arrow_turned_around_is_reported(tmp_path: Path):
    """nats importing dispatch (up a layer) and council importing nats (sideways) are named."""
    root = _tree(
        tmp_path,
        {
            "nats/publisher.py": "from swe_fleet.dispatch.service import Dispatcher\n",
            "dispatch/service.py": "from swe_fleet.nats.publisher import x\n",
            "council/protocol.py": "import swe_fleet.nats.publisher\n",
        },
    )
    problems = layering_violations(root)
    assert len(problems) == 2
    assert "swe_fleet.nats.publisher:1 imports swe_fleet.dispatch.service" in problems[0] + problems[1]
    assert any("layer 1 (council) must not depend on layer 1 (nats)" in p for p in problems)


def test_a_circle_is_reported_and_type_checking_imports_do_not_count(tmp_path: Path):
    """a -> b -> a is a circle; an import under `if TYPE_CHECKING:` is not an arrow."""
    root = _tree(
        tmp_path,
        {
            "nats/a.py": "from swe_fleet.nats import b\n",
            "nats/b.py": "def f():\n    from swe_fleet.nats.a import g\n",
            "nats/c.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from swe_fleet.nats import a\n",
        },
    )
    assert import_cycles(root) == [["swe_fleet.nats.a", "swe_fleet.nats.b"]]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("council/protocol.py", "import nats.js\n"),
        ("spec.py", "import requests\n"),
        ("llm/base.py", "from swe_fleet.llm import engine\n"),
    ],
)
def test_io_in_pure_code_is_reported(tmp_path: Path, module: str, source: str):
    """A pure module importing an I/O library or an I/O package of ours is named."""
    root = _tree(tmp_path, {module: source, "llm/engine.py": ""})
    assert len(purity_violations(root)) == 1


def test_a_library_module_importing_the_cli_is_reported(tmp_path: Path):
    """Only the CLI itself may import swe_fleet.cli."""
    root = _tree(tmp_path, {"cli/run.py": "", "local/run.py": "from swe_fleet.cli import run\n"})
    assert cli_importers(root) == ["swe_fleet.local.run:1"]


def test_the_console_script_starts_on_a_node_without_nats_py() -> None:
    """``swe-fleet node start`` runs on workers whose environment lacks nats-py (the preflight
    reports it missing there): importing the CLI must not need it; only the commands that talk
    to NATS import it, when they run."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'nats' or name.startswith('nats.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Missing())\n"
        "from swe_fleet.cli import main\n"
        "main(['node', 'start', '--help'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: swe-fleet node start" in proc.stdout
