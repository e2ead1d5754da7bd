"""The layout stays what docs/interfaces.md says, checked from the source with ``ast``:

* imports run one way: no circle; ``utils/`` imports nothing from ``data/``, ``models/``, ``analysis/`` or the
  commands; no module imports a command module;
* no source file over 400 lines;
* no module but ``mmdigits/tasks.py`` compares against a task's name, or chooses by it (a table keyed by
  task names, a ``match`` on them, a lookup keyed by the task): the others ask the task object.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmdigits"
COMMANDS = {"mmdigits.train", "mmdigits.evaluate", "mmdigits.predict", "mmdigits.embed", "mmdigits.report"}
TASK_NAMES = {"match", "digit", "image_digit", "audio_digit"}
TASK_VARIABLES = {"task", "task_name"}  # what a value holding the task (or its name) is called
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


def is_task_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in TASK_NAMES


def names_a_task(node: ast.AST) -> bool:
    """A value named for the task or its name: ``task``, ``task_name``, ``cfg.data.task``, ``self.task.name``
    (a literal name as a key, ``batch["image_digit"]``, reads a field of that name, not a task's)."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        return names_a_task(node.value)
    return (isinstance(node, ast.Name) and node.id in TASK_VARIABLES) or (
        isinstance(node, ast.Attribute) and node.attr in TASK_VARIABLES
    )


def task_name_comparisons(path: Path) -> list[int]:
    """Lines comparing a value with a task's name: ``x == "match"``, ``x != "digit"``, ``x in ("digit", ...)``
    (a key lookup such as ``"image_digit" in batch`` is not a comparison with a task)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for op, left, right in zip(node.ops, [node.left, *node.comparators], node.comparators):
            if isinstance(op, (ast.Eq, ast.NotEq)) and (is_task_name(left) or is_task_name(right)):
                lines.append(node.lineno)
            elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
                lines += [node.lineno] if any(is_task_name(e) for e in right.elts) else []
    return lines


def task_name_dispatch(path: Path) -> list[int]:
    """Lines choosing by a task's name without comparing: a table keyed by task names (``{"match": ...,
    "digit": ...}``, ``dict(match=...)``: every key a task's name), a ``match`` statement with a task name
    in a case, and a lookup keyed by the task: ``d.get(task)``, ``d[cfg.data.task]``, ``task in d``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            table = bool(node.keys) and all(k is not None and is_task_name(k) for k in node.keys)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            table = bool(node.keywords) and all(k.arg in TASK_NAMES for k in node.keywords)
        elif isinstance(node, ast.match_case):
            table = any(
                isinstance(p, ast.MatchValue) and is_task_name(p.value) for p in ast.walk(node.pattern)
            )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            table = bool(node.args) and names_a_task(node.args[0])
        elif isinstance(node, ast.Subscript):
            table = names_a_task(node.slice)
        elif isinstance(node, ast.Compare):
            table = any(
                isinstance(op, (ast.In, ast.NotIn)) and names_a_task(left)
                for op, left in zip(node.ops, [node.left, *node.comparators])
            )
        else:
            continue
        lines += [getattr(node, "lineno", None) or node.pattern.lineno] if table else []
    return sorted(lines)


def test_task_names_are_compared_only_in_the_task_module():
    found = {
        str(p.relative_to(PACKAGE)): task_name_comparisons(p) + task_name_dispatch(p)
        for p in PACKAGE.rglob("*.py")
        if p.name != "tasks.py"
    }
    assert not {k: v for k, v in found.items() if v}


def test_the_checks_can_fail(tmp_path):
    """The checks above flag a circle, a utils import of models, a task-name comparison and a dispatch on
    task names."""
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
        "PEERS = {'audio_digit': 1, 'image_digit': 2}\n"
        "w = dict(match=1, digit=2)\n"
        "p = PEERS.get(cfg.data.task)\n"
        "q = PEERS[self.task.name]\n"
        "ok = task_name not in PEERS\n"
        "match task:\n"
        "    case 'digit' | 'match':\n"
        "        pass\n"
        "r = {'digit': 3, 'p': 0.5}['digit'] + batch.get('image_digit') + ('audio_digit' in batch)\n"
    )
    graph = import_graph(pkg)
    assert graph["mmdigits.utils.a"] == {"mmdigits.models.b"}
    assert find_cycle(graph) is not None
    assert task_name_comparisons(pkg / "models" / "b.py") == [2, 3]
    # tables and lookups keyed by task names; a record with a "digit" field and field lookups are neither
    assert task_name_dispatch(pkg / "models" / "b.py") == [4, 5, 6, 7, 8, 10]
