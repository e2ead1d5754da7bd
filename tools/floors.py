"""The dependency floors, tested: install every declared dependency at the lowest version pyproject.toml
allows, in a fresh virtual environment, and run the test suite there.

    python -m tools.floors                       # constraints, venv in .floors/venv, then python -m pytest
    python -m tools.floors --print               # only the constraints (name==floor, one a line)
    python -m tools.floors -- tests/test_train.py -x   # pytest's arguments after --

The constraints pin our own requirements (the core, and the extras that ``dev`` and ``peers`` install) to
their floors; what they pull in themselves resolves as pip chooses. PyTorch comes first, at its floor, from
the index pip is configured with (PyPI's Linux wheel is the CUDA build: a large download). Needs a network.
Python 3.11 or later (tomllib).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "peers")  # what CI installs


def requirements(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    """The core dependencies and those of ``extras``, following ``mmdigits[...]`` self-references."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    found, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if req.name == project["name"]:
                todo.extend(req.extras)
            else:
                found.append(req)
    return found


def floor(req: Requirement) -> str:
    """The lowest version ``req`` allows: its one ``>=`` bound (every dependency must have one)."""
    lows = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(lows) != 1:
        raise ValueError(f"{req}: expected one '>=' floor, found {len(lows)}")
    return lows[0]


def constraints(pyproject: dict) -> list[str]:
    pins = {req.name.lower(): f"{req.name}=={floor(req)}" for req in requirements(pyproject)}
    return [pins[name] for name in sorted(pins)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--print", action="store_true", help="print the constraints and stop")
    parser.add_argument("--venv", type=Path, default=ROOT / ".floors" / "venv")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    args = parser.parse_args(argv)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = constraints(pyproject)
    if args.print:
        print("\n".join(pins))
        return 0
    args.venv.parent.mkdir(parents=True, exist_ok=True)
    pinned = args.venv.parent / "constraints.txt"
    pinned.write_text("\n".join(pins) + "\n")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(args.venv)], check=True)
    python = str(args.venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "-c", str(pinned)]
    torch = next(p for p in pins if p.lower().startswith("torch=="))
    subprocess.run([*pip, torch], check=True)
    subprocess.run([*pip, *pyproject["build-system"]["requires"]], check=True)  # the wheel test: no isolation
    subprocess.run([*pip, "-e", f".[{','.join(EXTRAS)}]"], cwd=ROOT, check=True)
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    (args.venv.parent / "installed.txt").write_text(freeze.stdout)
    env = {**os.environ, "PATH": f"{args.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([python, "-m", "pytest", *args.pytest_args], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
