"""The import rules of the repository (README: services share nothing but ``marketbus``):

- a service imports only ``marketbus.*``, third-party libraries and its own package;
- ``marketbus`` never imports ``services`` (the dev harness runs services by module name);
- no service imports another (the sandboxes count as a service);

checked statically on every module's ``ast``, and at run time: with any one service folder
hidden, every other service's modules still import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "services"
MARKETBUS_DIR = ROOT / "shared" / "marketbus"

# (importing module, imported service package): known violations being removed elsewhere.
ALLOWED: set[tuple[str, str]] = set()  # none: the export orchestrator reads history through marketbus.history

SERVICES = sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").exists())


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(base: Path, root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(base.rglob("*.py")):
        yield module_name(path, root), path


def imported_names(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved; for
    ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def service_of(name: str) -> str | None:
    """``services.<svc>`` for a name inside a service package, else None."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else None


def test_the_rules_see_every_service_and_resolve_relative_imports(tmp_path: Path) -> None:
    assert {"history_writer", "export_orchestrator", "order_router", "sandbox", "ingest_finx"} <= set(SERVICES)
    pkg = tmp_path / "services" / "export_orchestrator"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("from ..history_writer import query\nfrom .jobs import JobManager\nimport os\n")
    names = {n for _, n in imported_names(pkg / "x.py", "services.export_orchestrator.x")}
    assert {
        "services.history_writer",
        "services.history_writer.query",
        "services.export_orchestrator.jobs",
        "os",
    } <= names


def test_marketbus_never_imports_services_tests_or_bench() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}"
           for module, path in modules(MARKETBUS_DIR, MARKETBUS_DIR.parent)
           for line, name in imported_names(path, module)
           if name.split(".")[0] in ("services", "tests", "bench")]
    assert bad == [], "marketbus must not depend on services:\n" + "\n".join(bad)


def test_a_service_imports_only_marketbus_third_party_and_itself() -> None:
    bad = []
    for module, path in modules(SERVICES_DIR, ROOT):
        own = service_of(module)
        for line, name in imported_names(path, module):
            if name.split(".")[0] in ("tests", "bench", "shared"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
                continue
            other = service_of(name)
            if other is None or other == own or (own is None and module == "services"):
                continue
            if (module, other) in ALLOWED:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert bad == [], "a service may import only marketbus, third-party libraries and itself:\n" + "\n".join(bad)


def test_every_allow_list_entry_is_still_needed() -> None:
    """An allow-list entry whose import is gone must be removed with it."""
    seen = {(module, service_of(name)) for module, path in modules(SERVICES_DIR, ROOT)
            for _, name in imported_names(path, module)}
    assert seen >= ALLOWED, f"remove from ALLOWED: {sorted(ALLOWED - seen)}"


# Run in a fresh interpreter: for each service, hide it (a meta-path finder refuses it), forget
# every services.* module, and import every module of every other service. Third-party modules
# stay loaded between rounds, so the whole check costs about one import of everything.
_HIDE_AND_IMPORT = r"""
import importlib, json, sys, traceback
from importlib.abc import MetaPathFinder

services, modules, allowed_files = json.loads(sys.argv[1])

class Hidden(MetaPathFinder):
    name = None
    def find_spec(self, fullname, path=None, target=None):
        if self.name and (fullname == self.name or fullname.startswith(self.name + ".")):
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None

hidden = Hidden()
sys.meta_path.insert(0, hidden)
failures = []
for svc in services:
    for mod in [m for m in sys.modules if m == "services" or m.startswith("services.")]:
        del sys.modules[mod]
    hidden.name = "services." + svc
    for mod in modules:
        if mod == hidden.name or mod.startswith(hidden.name + "."):
            continue
        try:
            importlib.import_module(mod)
        except Exception as exc:
            files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
            if any(f.endswith(allowed) for allowed in allowed_files.get(svc, []) for f in files):
                continue  # an allow-listed import of the hidden service
            failures.append(f"without services.{svc}: import {mod} failed: {exc!r}")
print(json.dumps(failures))
"""


def test_deleting_any_one_service_leaves_every_other_service_importable() -> None:
    mods = [m for m, path in modules(SERVICES_DIR, ROOT) if path.name != "__main__.py" and m != "services"]
    allowed_files: dict[str, list[str]] = {}
    for importer, imported in ALLOWED:
        allowed_files.setdefault(imported.split(".")[1], []).append(importer.replace(".", "/") + ".py")
    proc = subprocess.run(
        [sys.executable, "-c", _HIDE_AND_IMPORT, json.dumps([SERVICES, mods, allowed_files])],
        capture_output=True, text=True, cwd=ROOT, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert failures == [], "\n".join(failures)


def test_the_names_the_dev_harness_runs_exist() -> None:
    """`marketbus up` and `marketbus sandbox` know services by name only: the names must be right."""
    import importlib.util

    from marketbus.cli.services import SANDBOX_MODULE, SANDBOX_PORTS, SERVICES
    from services.sandbox.registry import SANDBOXES  # a test may import services

    for _, module in SERVICES:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    assert importlib.util.find_spec(f"{SANDBOX_MODULE}.__main__") is not None
    assert {name: port for name, (_, port) in SANDBOXES.items()} == SANDBOX_PORTS


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``marketbus`` and ``services`` it imports, anywhere in its body:
    imports inside functions and under ``if TYPE_CHECKING:`` count too, because they are how a
    circle is usually hidden rather than removed. ``from pkg import name`` is an edge to
    ``pkg.name`` when that is a module, else to ``pkg``."""
    known = dict(modules(SERVICES_DIR, ROOT))
    known.update(modules(MARKETBUS_DIR, MARKETBUS_DIR.parent))
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(node, module, path)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in known and t != module)
    # importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, but a package's
    # ``__init__`` importing its own submodules is how packages work, not a circle: edges from a
    # module to its enclosing packages are therefore not added.
    return graph


def _resolve_from(node: ast.ImportFrom, module: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every independent cycle found by ``graphlib``: each cycle found is reported, then broken at
    its first edge, until the graph sorts."""
    from graphlib import CycleError, TopologicalSorter

    graph = {m: set(e) for m, e in graph.items()}
    cycles: list[list[str]] = []
    while True:
        try:
            TopologicalSorter(graph).prepare()
            return cycles
        except CycleError as exc:
            cycle = exc.args[1]  # [a, b, ..., a]: each node depends on the previous one
            cycles.append(cycle)
            graph[cycle[1]].discard(cycle[0])


def test_import_cycles_are_found_including_hidden_ones() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [sorted(set(c)) for c in import_cycles(graph)] == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_marketbus_and_services_modules() -> None:
    cycles = import_cycles(import_graph())
    assert cycles == [], "import cycles (break them with a narrow interface, not a late import):\n" + "\n".join(
        " -> ".join(reversed(c)) for c in cycles)
