"""mmdigits is a real package: its wheel carries the Hydra configs, and an installed copy composes them from
any directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (links kept as links): a build from it leaves the work tree untouched."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target, follow_symlinks=False)
    return dest


@pytest.mark.slow
def test_the_wheel_installed_elsewhere_composes_its_own_configs(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    src = tracked_copy(tmp_path / "src")
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        ".",
        "-w",
        "dist",
    ]
    subprocess.run(build, cwd=src, check=True, capture_output=True)
    (wheel,) = (src / "dist").glob("mmdigits-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = {n.removeprefix("mmdigits/conf/") for n in names if n.startswith("mmdigits/conf/")}
    assert configs == {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}

    # a fresh venv that sees the installed dependencies, with this wheel (not the checkout) as mmdigits
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import mmdigits; print(mmdigits.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(venv), where
    job = subprocess.run([python, "-m", "mmdigits.train", "--cfg", "job", "model=crnn_cnn"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]
    assert "_target_: mmdigits.models.audio.CRNNEncoder" in job.stdout
    assert not (elsewhere / "logs").exists()  # --cfg job composes only

    # the search's sweeper ships in the namespace package Hydra scans, and Hydra finds it there
    plugin = {n for n in names if n.startswith("hydra_plugins/")}
    assert "hydra_plugins/mmdigits_optuna_sweeper/optuna_sweeper.py" in plugin
    assert "hydra_plugins/__init__.py" not in plugin  # shared with other plugins: a namespace package
    find = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; import inspect; "
        "print([inspect.getfile(c) for c in Plugins.instance().discover(Sweeper) if 'mmdigits' in str(c)])"
    )
    found = subprocess.run(
        [python, "-c", find], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.count(str(venv)) == 1, found.stdout
    search = subprocess.run([python, "-m", "mmdigits.train", "hparams_search=lr_width", "--cfg", "hydra"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert search.returncode == 0, search.stderr[-3000:]
    assert "mmdigits_optuna_sweeper.optuna_sweeper.OptunaSweeper" in search.stdout


def test_every_dependency_has_one_floor_and_the_floors_tool_pins_each_to_it():
    """``python -m tools.floors`` installs every requirement at its floor and runs the suite there: each
    requirement, in every extra, names its lowest version, and the tool pins exactly those."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    from tools.floors import constraints, floor, requirements

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    every = requirements(pyproject, tuple(pyproject["project"]["optional-dependencies"]))
    assert all(floor(r) for r in every)  # raises for a requirement without one '>=' floor
    installed = requirements(pyproject)  # the core and what CI installs (dev, peers)
    pins = dict(p.split("==") for p in constraints(pyproject))
    assert pins == {r.name: floor(r) for r in installed}
    assert {"torch", "lightning", "scipy", "aeon", "pytest"} <= set(pins)
    with pytest.raises(ValueError, match="expected one '>=' floor"):
        floor(Requirement("numpy<3"))


def _imported_modules(*folders: str) -> set[str]:
    import ast

    names = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    ours = {"mmdigits", "tests", "tools", "hydra_plugins", "__future__"}
    return names - set(sys.stdlib_module_names) - ours


def test_everything_the_code_and_tests_import_is_declared():
    """A fresh ``pip install -e ".[dev,peers]"`` runs the suite: each third-party module that the package, the
    tests and the tools import comes from a declared requirement or from one of their own requirements."""
    import importlib.metadata as md
    import re

    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    from tools.floors import requirements

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {norm(r.name) for r in requirements(pyproject)}
    reachable = set(declared)
    for name in declared:
        with contextlib.suppress(md.PackageNotFoundError):  # not installed: its own imports fail loudly
            reachable |= {norm(Requirement(r).name) for r in md.requires(name) or [] if "extra ==" not in r}
    dists = md.packages_distributions()
    missing = {
        module: sorted(dists.get(module, ["?"]))
        for module in _imported_modules("mmdigits", "tests", "tools", "hydra_plugins")
        if not {norm(d) for d in dists.get(module, [])} & reachable
    }
    assert not missing, f"imported but not declared in pyproject.toml (module: distributions): {missing}"
