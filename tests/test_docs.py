"""The documents' links point at files that exist, and the README's commands compose."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.hydra_utils import compose_cfg

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("experiments/**/*.md"))]
TEXTS = [*DOCS, *sorted((REPO / "conf").rglob("*.yaml"))]  # the documents and the configs' comments


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    broken = [link for link in links if not link.startswith("http") and not (doc.parent / link).exists()]
    assert not broken, broken


def test_the_tests_the_documents_cite_exist():
    """A claim that cites its test (``tests/x.py::name``) cites one that is there to hold it."""
    missing = []
    for doc in TEXTS:
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text()):
            test = REPO / path
            if not test.is_file() or not re.search(rf"^def {name}\(", test.read_text(), re.M):
                missing.append(f"{doc.relative_to(REPO)}: {path}::{name}")
    assert not missing, missing


def test_the_files_the_documents_name_exist():
    """A file named in backticks (`mmdigits/...`, `conf/...`, `tests/...`) is one the repository has."""
    top = "mmdigits|conf|tests|tools|experiments|hydra_plugins|docs"
    missing = [
        f"{doc.relative_to(REPO)}: {name}"
        for doc in TEXTS
        for name in re.findall(rf"`((?:{top})/[\w./-]+)", doc.read_text())
        if "<" not in name and not (REPO / name.split("::")[0]).exists()
    ]
    assert not missing, missing


def readme_train_commands() -> list[list[str]]:
    """The overrides of each ``python -m mmdigits.train ...`` line of the README (single runs)."""
    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("python -m mmdigits.train") and " -m " not in line[len("python -m") :]:
            commands.append(shlex.split(line)[3:])
    return commands


def test_the_readme_names_the_train_commands_a_user_runs():
    commands = readme_train_commands()
    assert [] in commands and ["model=crnn_cnn"] in commands


@pytest.mark.parametrize("overrides", readme_train_commands(), ids=lambda o: " ".join(o) or "default")
def test_each_readme_train_command_composes(overrides, tmp_path):
    cfg = compose_cfg("train", overrides, tmp_path)
    assert cfg.model.audio_encoder._target_.startswith("mmdigits.models.")


def test_the_readme_results_are_the_records_figures():
    """The README's results block is what the index command writes from the records' summary.json files."""
    from mmdigits.analysis.index import README_BEGIN, README_END, headline_table

    text = (REPO / "README.md").read_text()
    block = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    assert block.strip() == headline_table(REPO / "experiments").strip()
