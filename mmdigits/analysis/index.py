"""The index of every experiment record: ``experiments/README.md`` (one row per group of each record's
``summary.json``) and the results block of the project's README, both written by
``python -m mmdigits.report --index experiments``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mmdigits.analysis.records import SUMMARY_FILE, format_ci, format_rate, format_time
from mmdigits.analysis.runs import markdown_table
from mmdigits.utils.io import atomic_write_bytes

README_BEGIN = "<!-- results: written by python -m mmdigits.report --index experiments -->"
README_END = "<!-- end of results -->"
INDEX_MARKER = "<!-- The table below is written by python -m mmdigits.report --index experiments. -->"


def machine(envs: Sequence[dict[str, Any]]) -> str:
    """The machines the runs ran on, in words: ``2 × Intel(R) Xeon(R) Processor`` (and the GPU)."""
    names = {
        f"{e.get('cpu_count')} × {e.get('cpu')}" + (f", {e['gpu']}" if e.get("gpu") else "")
        for e in envs
        if e.get("cpu")
    }
    return "; ".join(sorted(names)) or "–"


def summaries(experiments: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Each record's summary; a record that compares its recipe with others keeps its own groups only."""
    out = []
    for p in sorted(experiments.glob(f"*/{SUMMARY_FILE}")):
        s = json.loads(p.read_text())
        own = [g for g in s["groups"] if f"experiment={s['name']}" in g["group"].split()]
        out.append((p.parent, {**s, "groups": own or s["groups"]}))
    return out


def shown_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A study's groups in the index: its best, or the best on each data split where its groups name one
    (``data=default`` and ``data=speaker_folds``: a corpus-split figure is never shown without its folds')."""
    best: dict[str | None, dict[str, Any]] = {}
    for g in groups:  # best first
        split = next((w for w in g["group"].split() if w.startswith("data=")), None)
        best.setdefault(split, g)
    return list(best.values())


def headline_table(experiments: Path, link_prefix: str = "experiments/") -> str:
    """The README's results: per record, each group's mean test accuracy and 95 % CI over its runs (a
    record of more than two groups, a study: its best group)."""
    rows = []
    for record, s in summaries(experiments):
        groups = s["groups"] if len(s["groups"]) <= 2 else shown_groups(s["groups"])
        for g in groups:
            more = f" (best of {len(s['groups'])} groups)" if len(s["groups"]) > 2 else ""
            rows.append(
                {
                    "record": f"[{s['name']}]({link_prefix}{record.name}/README.md)",
                    "runs": g["group"] if len(s["groups"]) > 1 else "all",
                    "test accuracy, mean of runs": f"{g['mean']:.4f}{more}",
                    "95 % CI over runs": format_ci(*g["ci_seeds"]),
                    "n": g["n"],
                    "reproduce": f"`{s['command']}`",
                }
            )
    return markdown_table(pd.DataFrame(rows)) if rows else "No record has been generated yet."


def update_readme(readme: Path, experiments: Path) -> bool:
    """Replace the README's results block (between its markers) with :func:`headline_table`; False when the
    README has no such block."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    block = "\n".join([README_BEGIN, "", headline_table(experiments), "", README_END])
    atomic_write_bytes(readme, (head + block + tail).encode())
    return True


def _index_row(
    record: Path,
    s: dict[str, Any],
    recipe: str,
    runs: Any,
    acc: str = "–",
    ci: str = "–",
    time: str = "–",
    rate: str = "–",
) -> dict[str, Any]:
    """One row of the index: a group of record ``record`` (summary ``s``), or its validation-only line."""
    return {
        "record": f"[{s['name']}]({record.name}/README.md)",
        "recipe": recipe,
        "command": f"`{s['command']}`",
        "runs": runs,
        "test acc (mean)": acc,
        "95 % CI over runs": ci,
        "time per run": time,
        "inference pairs/s": rate,
        "machine": machine(s.get("environments") or []),
    }


def write_index(experiments: Path) -> Path:
    """``experiments/README.md``: one row per group of every record's summary.json (text above the marker
    kept); the results block of the README beside ``experiments`` follows it."""
    rows = []
    for record, s in summaries(experiments):
        if not s["groups"]:  # its runs never read the test split: validation decided, by its metric
            validation = f"validation only (`{s.get('metric', 'val/acc')}`)"
            rows.append(_index_row(record, s, validation, s.get("runs", "–")))
        for g in s["groups"]:
            figures = f"{g['mean']:.4f}", format_ci(*g["ci_seeds"]), format_time(g), format_rate(g)
            rows.append(_index_row(record, s, g["group"], g["n"], *figures))
    readme = experiments / "README.md"
    head = readme.read_text().split(INDEX_MARKER)[0].rstrip() if readme.is_file() else "# Experiments"
    table = markdown_table(pd.DataFrame(rows)) if rows else "No record has been generated yet."
    atomic_write_bytes(readme, "\n".join([head, "", INDEX_MARKER, "", table, ""]).encode())
    if (experiments.parent / "README.md").is_file():
        update_readme(experiments.parent / "README.md", experiments)
    return readme
