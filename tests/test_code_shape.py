"""The shape of the code, checked rather than hoped for: no import cycle between kompress modules (the data
path reads in one direction), and no function over MAX_LINES lines without a reason written beside it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "jobs" / "src", ROOT / "operator" / "src"]
MAX_LINES = 60
REASON = "# long:"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in graph.modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_import_cycles() -> None:
    """Every import counts: inside functions (a lazy import that dodges a cycle is still a cycle) and under
    `if TYPE_CHECKING:` (a type a module needs is a dependency a reader must follow)."""
    graph = grimp.build_graph("kompress.jobs", "kompress.operator", exclude_type_checking_imports=False,
                              cache_dir=None)
    assert len(graph.modules) > 40
    assert _cycles(graph) == []


def test_operator_loads_no_ml_library() -> None:
    """Importing every operator module (and with them the engine's spec, report, gates, registry and the
    runtime/task registries) loads no ML library: runtimes import theirs inside the functions that run a
    model, which the operator never calls."""
    import pkgutil
    import subprocess

    import kompress.operator

    modules = [f"kompress.operator.{m.name}" for m in pkgutil.iter_modules(kompress.operator.__path__)]
    banned = ("onnx", "onnxruntime", "torch", "transformers", "matplotlib", "openvino", "nncf")
    code = (f"import sys; import {', '.join(modules)}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {banned!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the operator loads {out.strip()}"


def _runtime_name_comparisons(names: set[str]) -> list[str]:
    """Comparisons with a runtime's name (==, !=, in, not in) and Literal types spelling one, outside
    runtimes/: what a runtime is able to do is asked of the runtime, never inferred from its name."""
    found = []
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            if "runtimes" in path.relative_to(src).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    parts = [node.left, *node.comparators]
                elif isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "Literal":
                    parts = [node.slice]
                else:
                    continue
                spelled = {c.value for part in parts for c in ast.walk(part)
                           if isinstance(c, ast.Constant) and c.value in names}
                if spelled:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(spelled)}")
    return found


def test_no_runtime_name_is_compared_outside_runtimes() -> None:
    from kompress.jobs.runtimes import registry

    assert len(registry.names()) >= 2
    assert _runtime_name_comparisons(set(registry.names())) == []


def _long_functions() -> list[str]:
    found = []
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if length > MAX_LINES and REASON not in lines[first - 2]:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_functions_are_short_or_say_why() -> None:
    """Over MAX_LINES lines, a function carries `# long: <reason>` on the line above it."""
    assert _long_functions() == []
