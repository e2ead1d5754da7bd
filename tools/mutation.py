"""Mutation testing with mutmut 3: each module against the unit tests that exercise it.

    python -m tools.mutation                     # every module in MODULES, one after another
    python -m tools.mutation decision splits     # some of them (any unique part of the path)
    python -m tools.mutation --show decision     # each surviving mutant and its change, no run
    python -m tools.mutation --list              # the module -> test files table

Per module, a work directory ``.mutation/<module>/`` gets a copy of ``mmdigits/``, ``tests/``, ``conf/`` and
``pyproject.toml`` with a ``[tool.mutmut]`` section that mutates that one file and selects only its test
files (slow and integration tests left out: they spawn subprocesses, which never see mutmut's
trampolines). mutmut then writes ``mutants/`` there and runs, per mutant, only the tests that cover the
mutated function. Counts come from ``mutants/<module>.meta``; the table is printed and written to
``.mutation/results.md`` (and ``results.json``). A later run of the same module reuses mutmut's cache
only with ``--keep`` (by default every run starts afresh: mutmut's cache does not notice
a test added to a file it already selected). ``.mutation/`` and ``mutants/`` are git-ignored.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
COPIED = ("mmdigits", "tests", "conf")
PYTEST_ARGS = ["-m", "not slow and not integration", "-p", "no:cacheprovider", "-W", "ignore"]

# the tests of tests/test_security.py that read files in this process (the others start the commands)
SECURITY = tuple(
    f"tests/test_security.py::test_{name}"
    for name in (
        "object_array_where_numbers_belong_is_refused_unread",
        "legitimate_object_arrays_still_load",
        "absurdly_long_row_is_refused_with_its_row",
    )
)
# module -> the fast test files (or tests) that exercise it
MODULES: dict[str, tuple[str, ...]] = {
    "mmdigits/models/decision.py": ("tests/test_decision.py", "tests/test_module.py"),
    "mmdigits/data/splits.py": (
        "tests/test_splits.py",
        "tests/test_data_datamodule.py",
        "tests/test_user_mistakes.py",
    ),
    "mmdigits/tasks.py": ("tests/test_tasks.py", "tests/test_module.py", "tests/test_data_datamodule.py"),
    "mmdigits/utils/io.py": ("tests/test_data_io.py", "tests/test_reliability.py"),
    "mmdigits/data/samplers.py": ("tests/test_samplers.py", "tests/test_data_datamodule.py"),
    "mmdigits/models/augment.py": ("tests/test_augment.py", "tests/test_augment_draws.py"),
    "mmdigits/models/fusion.py": ("tests/test_fusion_parts.py", "tests/test_fusion.py"),
    "mmdigits/models/layers.py": ("tests/test_layers.py", "tests/test_augment.py"),
    "mmdigits/data/npy.py": ("tests/test_npy.py", *SECURITY, "tests/test_data_io.py"),
    "mmdigits/data/challenge.py": ("tests/test_challenge.py", "tests/test_data_validation.py", *SECURITY),
    "mmdigits/data/dataset.py": ("tests/test_dataset.py", "tests/test_data_datamodule.py"),
    "mmdigits/utils/rundir.py": ("tests/test_rundir.py",),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "type check"}
COLUMNS = ("mutants", "killed", "survived", "timeout", "no tests", "other")


def status(code: int | None) -> str:
    """mutmut's name for a mutant's exit code (``mutmut.stats.status_by_exit_code``, without importing
    mutmut here); None: not run yet."""
    if code is None:
        return "not checked"
    return STATUS.get(code, "suspicious")


def select(names: list[str]) -> list[str]:
    """The modules of MODULES that the given names (unique parts of their paths) pick; all when none."""
    if not names:
        return list(MODULES)
    chosen = []
    for name in names:
        hits = [m for m in MODULES if name in m]
        if len(hits) != 1:
            raise SystemExit(f"{name!r} names {len(hits)} modules of {sorted(MODULES)}")
        chosen.append(hits[0])
    return chosen


def work_dir(module: str) -> Path:
    return WORK / module.removeprefix("mmdigits/").removesuffix(".py").replace("/", ".")


def mutmut_section(module: str, tests: tuple[str, ...]) -> str:
    """The ``[tool.mutmut]`` settings: mutate ``module`` only, with only ``tests`` selected."""
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["mmdigits"]\n'
        f"only_mutate = [{json.dumps(module)}]\n"
        'also_copy = ["conf"]\n'
        f"pytest_add_cli_args = {json.dumps(PYTEST_ARGS)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}\n"
    )


def prepare(module: str, fresh: bool, tests: tuple[str, ...]) -> Path:
    """The module's work directory, with fresh copies of the sources and tests (mutmut's ``mutants/`` and
    its cached results are kept unless ``fresh``)."""
    work = work_dir(module)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + mutmut_section(module, tests))
    return work


def mutmut_command() -> list[str]:
    exe = shutil.which("mutmut")
    return [exe] if exe else [sys.executable, "-m", "mutmut"]


def run_module(module: str, tests: tuple[str, ...], fresh: bool, max_children: int, log: Path) -> float:
    """Run mutmut on one module against ``tests`` (output to ``log``); the seconds it took."""
    work = prepare(module, fresh, tests)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            [*mutmut_command(), "run", "--max-children", str(max_children)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        print(f"mutmut failed on {module} (exit {done.returncode}); see {log}", file=sys.stderr)
    return seconds


def exit_codes(module: str) -> dict[str, int | None]:
    meta = work_dir(module) / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def counts(module: str) -> dict[str, int]:
    """Mutants, killed, survived, timed out, without tests and anything else for one module."""
    by_status = Counter(status(code) for code in exit_codes(module).values())
    row = {"mutants": sum(by_status.values())}
    for name in COLUMNS[1:-1]:
        row[name] = by_status.pop(name, 0)
    row["other"] = sum(by_status.values())  # suspicious, segfault, not checked, type check
    return row


def survivors(module: str) -> list[str]:
    return sorted(k for k, code in exit_codes(module).items() if status(code) != "killed")


def kill_rate(row: dict[str, int], equivalent: int = 0) -> str:
    """Killed (timeouts count as detected) over the mutants that are not equivalent."""
    counted = row["mutants"] - equivalent
    return f"{100 * (row['killed'] + row['timeout']) / counted:.1f} %" if counted > 0 else "-"


def table(modules: list[str], seconds: dict[str, float]) -> str:
    lines = [
        "| module | " + " | ".join(COLUMNS) + " | kill rate | seconds |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for module in modules:
        row = counts(module)
        cells = " | ".join(str(row[c]) for c in COLUMNS)
        lines.append(f"| {module} | {cells} | {kill_rate(row)} | {seconds.get(module, 0):.0f} |")
    return "\n".join(lines)


def function_sources(work: Path, module: str) -> dict[str, list[str]]:
    """The lines of every function in the mutated copy of ``module``, by name (mutmut writes each mutant
    as a function ``<name>__mutmut_<n>`` next to the original, ``<name>__mutmut_orig``)."""
    text = (work / "mutants" / module).read_text()
    tree = ast.parse(text)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            found[node.name] = (ast.get_source_segment(text, node) or "").splitlines()[1:]
    return found


def changed_lines(sources: dict[str, list[str]], name: str) -> tuple[list[str], list[str]]:
    """The removed and added lines of one mutant against its original function."""
    function = name.rsplit(".", 1)[-1]
    mutant = sources.get(function, [])
    original = sources.get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
    diff = list(difflib.ndiff(original, mutant))
    removed = [d[2:].strip() for d in diff if d.startswith("- ")]
    return removed, [d[2:].strip() for d in diff if d.startswith("+ ")]


def show(module: str) -> None:
    """Every mutant of ``module`` that was not killed, one Markdown line each: its name, status and change."""
    codes = exit_codes(module)
    sources = function_sources(work_dir(module), module) if codes else {}
    print(f"### {module}")
    for name in survivors(module):
        removed, added = changed_lines(sources, name)
        short = name.split(".")[-1].replace("\u01c1", ".")
        change = f"`{' / '.join(removed)}` → `{' / '.join(added)}`"
        print(f"- `{short}` ({status(codes[name])}): {change}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="parts of module paths (default: all of MODULES)")
    parser.add_argument("--keep", action="store_true", help="reuse mutmut's cached results (no new tests)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--show", action="store_true", help="list the surviving mutants and their changes, no run"
    )
    parser.add_argument("--list", action="store_true", help="print the module -> tests table, no run")
    parser.add_argument("--tests", nargs="+", help="these test files instead of the table's (one module)")
    args = parser.parse_args(argv)
    modules = select(args.modules)
    if args.tests and len(modules) != 1:
        raise SystemExit("--tests replaces the test files of one module; name exactly one")
    if args.list:
        for module in modules:
            print(f"{module}: {' '.join(MODULES[module])}")
        return 0
    if args.show:
        for module in modules:
            show(module)
        return 0
    WORK.mkdir(exist_ok=True)
    results_file = WORK / "results.json"
    stored = json.loads(results_file.read_text()) if results_file.exists() else {}
    seconds = {m: v["seconds"] for m, v in stored.items()}
    for module in modules:
        log = WORK / f"{work_dir(module).name}.log"
        tests = tuple(args.tests or MODULES[module])
        print(f"{module}: {' '.join(tests)} (log: {log})", flush=True)
        seconds[module] = run_module(module, tests, not args.keep, args.max_children, log)
        stored[module] = {**counts(module), "seconds": seconds[module], "tests": tests}
        stored[module]["survivors"] = survivors(module)
        results_file.write_text(json.dumps(stored, indent=1, sort_keys=True))
        print(f"  {counts(module)} in {seconds[module]:.0f} s", flush=True)
    report = table([m for m in MODULES if m in stored], seconds)
    (WORK / "results.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
