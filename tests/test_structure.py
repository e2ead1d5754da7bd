"""The layout stays what docs/interfaces.md says, checked from the source with ``ast``:

* imports run one way: no circle; ``utils/`` imports nothing from ``data/``, ``models/``, ``analysis/`` or the
  commands; no module imports a command module;
* no source file over 400 lines;
* no module but ``mmdigits/tasks.py`` compares against a task's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmdigits"
COMMANDS = {"mmdigits.train", "mmdigits.evaluate", "mmdigits.predict", "mmdigits.embed", "mmdigits.report"}
TASK_NAMES = {"match", "digit", "image_digit", "audio_digit"}
MAX_LINES = 400


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (at any depth: function-level imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = sources(root)
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None. Package ``__init__`` edges to their
    own submodules are not circles in Python's sense and are left out."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m], _ = 1, stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n.startswith(m + "."):  # a package importing its own submodule
                continue
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m], _ = 2, stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_utils_import_nothing_above_them():
    for mod, deps in import_graph().items():
        if mod.startswith("mmdigits.utils"):
            above = {
                d for d in deps if d.startswith(("mmdigits.data", "mmdigits.models", "mmdigits.analysis"))
            }
            assert not above | (deps & COMMANDS), f"{mod} imports {sorted(above | (deps & COMMANDS))}"


def test_nothing_imports_a_command():
    for mod, deps in import_graph().items():
        assert not deps & COMMANDS, f"{mod} imports the command module(s) {sorted(deps & COMMANDS)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_source_files_stay_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def task_name_comparisons(path: Path) -> list[int]:
    """Lines comparing a value with a task's name: ``x == "match"``, ``x != "digit"``, ``x in ("digit", ...)``
    (a key lookup such as ``"image_digit" in batch`` is not a comparison with a task)."""
    is_name = lambda n: isinstance(n, ast.Constant) and n.value in TASK_NAMES  # noqa: E731
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for op, left, right in zip(node.ops, [node.left, *node.comparators], node.comparators):
            if isinstance(op, (ast.Eq, ast.NotEq)) and (is_name(left) or is_name(right)):
                lines.append(node.lineno)
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                lines += [node.lineno] if any(is_name(e) for e in right.elts) else []
    return lines


def test_task_names_are_compared_only_in_the_task_module():
    found = {
        str(p.relative_to(PACKAGE)): task_name_comparisons(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "tasks.py"
    }
    assert not {k: v for k, v in found.items() if v}


def test_the_checks_can_fail(tmp_path):
    """The checks above flag a circle, a utils import of models and a task-name comparison."""
    pkg = tmp_path / "mmdigits"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "utils" / "a.py").write_text("from mmdigits.models.b import x\n")
    (pkg / "models" / "b.py").write_text(
        "import mmdigits.utils.a\n"
        "x = 1 if y == 'match' else 2\n"
        "z = t in ('digit', 'image_digit') or 'digit' in d\n"
    )
    graph = import_graph(pkg)
    assert graph["mmdigits.utils.a"] == {"mmdigits.models.b"}
    assert find_cycle(graph) is not None
    assert task_name_comparisons(pkg / "models" / "b.py") == [2, 3]
