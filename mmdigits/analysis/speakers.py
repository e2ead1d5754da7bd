"""Which speakers the errors come from: a per-speaker error table over a group's runs.

Each run's saved test predictions are joined with its build's ``speaker_spoken_test.npy`` (the data
directory recorded in the run's ``run.json``). For the Arabic corpus, speaker ids 0-65 are the corpus's
training-file speakers in file order (0-32 its male half) and 66-87 its test-file speakers (66-76 male).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmdigits.analysis import stats
from mmdigits.analysis.runs import markdown_table
from mmdigits.data.npy import load_npy
from mmdigits.errors import MMDigitsError

TOP = 10
DOMINANT = 0.4  # one speaker with this share of a group's errors is called out


def run_speakers(run_dir: str | Path) -> np.ndarray | None:
    """The speaker of each test pair of the run's build, or None when the build has no speaker ids."""
    from mmdigits.analysis.plots import run_data_settings

    try:
        data_dir = Path(run_data_settings(run_dir)["dir"])
    except (FileNotFoundError, KeyError, ValueError, MMDigitsError):  # not plain data: never resolved
        return None
    path = data_dir / "speaker_spoken_test.npy"
    return load_npy(path) if path.is_file() else None


def speaker_errors(run_dirs: list[str], binary: bool) -> pd.DataFrame:
    """One row per speaker with errors: pairs tested, errors, error rate and the commonest confusions
    (``true→decided ×n``; for the match task ``missed match`` / ``false match``), most errors first."""
    pairs: Counter[int] = Counter()
    errors: Counter[int] = Counter()
    confusions: dict[int, Counter[str]] = {}
    for d in run_dirs:
        rows, spk = stats.read_predictions(d), run_speakers(d)
        if rows is None or spk is None:
            continue
        who = spk[rows[:, 0].astype(np.int64)]
        wrong = rows[:, 2] != rows[:, 1]
        pairs.update(who.tolist())
        for s, t, dec in zip(who[wrong], rows[wrong, 1].astype(int), rows[wrong, 2].astype(int)):
            errors[int(s)] += 1
            what = ("missed match" if t == 1 else "false match") if binary else f"{t}→{dec}"
            confusions.setdefault(int(s), Counter())[what] += 1
    out = [{"speaker": s, "pairs": pairs[s], "errors": n, "error rate": n / pairs[s],
            "commonest errors": ", ".join(f"{w} ×{c}" for w, c in confusions[s].most_common(3))}
           for s, n in errors.items()]  # fmt: skip
    df = pd.DataFrame(out, columns=["speaker", "pairs", "errors", "error rate", "commonest errors"])
    return df.sort_values(["errors", "speaker"], ascending=[False, True]).reset_index(drop=True)


def speaker_section(df: pd.DataFrame, groups: list[dict[str, Any]]) -> list[str]:
    """Per group (best first): the speakers with the most errors over its runs, and a note when one speaker
    accounts for much of them."""
    out: list[str] = []
    binary = bool(df["task"].eq("match").any()) if "task" in df else False
    for g in groups:
        table = speaker_errors(list(df.loc[df["group"] == g["group"], "dir"]), binary)
        if table.empty:
            continue
        total = int(table["errors"].sum())
        top = table.iloc[0]
        note = (
            f"Speaker {top['speaker']} accounts for {top['errors']} of the group's {total} errors "
            f"({top['errors'] / total:.0%})."
            if top["errors"] >= DOMINANT * total and total >= 5
            else f"No speaker accounts for {DOMINANT:.0%} of the group's {total} errors."
        )
        shown = table.head(TOP).assign(**{"error rate": table.head(TOP)["error rate"].map("{:.3f}".format)})
        out += [f"### `{g['group']}`", "", note, "", markdown_table(shown), ""]
    if not out:
        return []
    ids = " ".join(("For the Arabic corpus, " + __doc__.split("For the Arabic corpus, ")[1]).split())
    head = f"Over each group's runs (every fold and seed); the speakers with the most errors, at most {TOP}."
    return ["## Errors by speaker", "", head, ids, "", *out]
