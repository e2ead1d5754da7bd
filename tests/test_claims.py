"""What the project says about itself: no diary, no work history, no paths outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORDINAL = (
    r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth"
    r"|\d+(st|nd|rd|th))"
)
FORBIDDEN = {
    "a numbered work period": re.compile(rf"\b{ORDINAL}[ -](session|round|work period)\b", re.I),
    "a round number": re.compile(r"\bround[- ]\d+\b", re.I),
    "a work period": re.compile(r"\bwork periods?\b", re.I),
    "'the issue'": re.compile(r"\bthe issue\b", re.I),
    "the old diary": re.compile(r"\bRESULTS\.md\b"),
    "a path outside the repository": re.compile(r"\.\./shared|(?<![\w.])/(work|root|home)/"),
}
# CI runs beside the shared corpora by design; this file names the patterns it forbids
EXEMPT = {".ci/run", "tests/test_claims.py"}
DATED = re.compile(r"\b20\d\d-\d\d-\d\d\b|this (machine|CPU)|AVX|AMX|\bsession\b", re.I)


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
    ).stdout
    files = []
    for name in out.splitlines():
        path = REPO / name
        if name in EXEMPT or not path.is_file() or path.suffix in (".png", ".npy", ".ckpt"):
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def offences(text: str, patterns: dict[str, re.Pattern[str]]) -> list[str]:
    return [f"line {i}: {what}: {m.group(0)!r}" for i, line in enumerate(text.splitlines(), 1)
            for what, rx in patterns.items() for m in rx.finditer(line)]  # fmt: skip


def test_nothing_in_the_project_speaks_of_work_history_or_outside_paths():
    found = {str(p.relative_to(REPO)): offences(p.read_text(), FORBIDDEN) for p in tracked_text_files()}
    found = {k: v for k, v in found.items() if v}
    assert not found, "\n".join(f"{k}: {v[:3]}" for k, v in found.items())


def test_the_readme_carries_no_dated_or_machine_specific_claim():
    assert not offences((REPO / "README.md").read_text(), {"dated or machine-specific": DATED})


@pytest.mark.parametrize(
    "line",
    ["as the twelfth session found", "round-1 speed", "see ../shared/data/raw", "/work/plan.md",
     "the issue says", "experiments/RESULTS.md", "in work period 3"],
)  # fmt: skip
def test_the_checks_can_fail(line):
    assert offences(line, FORBIDDEN)
