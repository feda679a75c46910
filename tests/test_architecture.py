"""The layering, import and size rules of docs/architecture.md, checked on the source tree."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.helpers import REPO

SRC = REPO / "src" / "adaptguard"
MAX_FUNCTION_LINES = 60


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("adaptguard", exclude_type_checking_imports=True)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("a,b", [("defenses", "attacks"), ("attacks", "defenses"), ("core", "models"),
                                 ("metrics", "training"), ("data", "models")])  # fmt: skip
def test_side_by_side_packages_never_import_each_other(graph, a, b):
    assert not graph.chain_exists(f"adaptguard.{a}", f"adaptguard.{b}", as_packages=True)


def test_no_import_cycle_between_modules(graph):
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*path, module, imported]
            if imported not in state and (cycle := visit(imported, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in modules:
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, " -> ".join(cycle)


def test_every_function_in_the_library_is_at_most_60_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_readme_is_a_short_landing_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text
