"""The record of a hyperparameter search, read from its studies' journals and run directories.

``python -m mmdigits.report --search <sweep dir> [<sweep dir> ...] --record experiments/<name>`` writes,
per study (``<sweep dir>/optuna.journal``): its trials by state, the epochs they trained and the study's wall
time; the best trial's parameters and validation accuracy; every trial. The trials never read the test split
(``test: false``); the best trial of the first study is tested once, afterwards, by

    python -m mmdigits.evaluate ckpt_path=$(python -m mmdigits.analysis.search <sweep dir>) \\
        hydra.run.dir=<sweep dir>/best_trial_test

and its ``metrics.json`` there gives the record its test figure.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mmdigits.analysis import stats
from mmdigits.analysis.runs import markdown_table, read_metrics
from mmdigits.search import JOURNAL_FILE  # the package itself imports no optuna

BEST_TEST_DIR = "best_trial_test"
STATES = ("complete", "pruned", "fail", "running", "waiting")


def load_trials(sweep_dir: Path) -> tuple[str, list[Any]]:
    """The one study in ``sweep_dir``'s journal: its name and its frozen trials (optuna imported here only:
    it is the ``search`` extra)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = sweep_dir / JOURNAL_FILE
    if not journal.is_file():
        raise FileNotFoundError(f"{sweep_dir}: no {JOURNAL_FILE}, so no study to report")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    studies = storage.get_all_studies()
    if len(studies) != 1:
        raise ValueError(f"{journal}: expected one study, found {len(studies)}")
    name = studies[0].study_name
    return name, optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def _metrics(trial: Any) -> dict[str, Any]:
    run_dir = trial.user_attrs.get("run_dir")
    return read_metrics(Path(run_dir)) if run_dir and (Path(run_dir) / "metrics.json").is_file() else {}


def _shown(value: Any) -> str:
    """A parameter as the record shows it: floats to 3 significant digits (a log-scale learning rate)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _seconds(trial: Any) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return math.nan
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_rows(name: str, trials: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        values, seconds = t.intermediate_values, _seconds(t)
        rows.append(
            {
                "study": name,
                "trial": t.number,
                "state": t.state.name.lower(),
                **{k: _shown(v) for k, v in sorted(t.params.items())},
                "epochs": len(values),
                "val/acc_best": t.value if t.value is not None else max(values.values(), default=math.nan),
                "seconds": round(seconds) if math.isfinite(seconds) else "–",
                "run": Path(t.user_attrs.get("run_dir", "")).name,
            }
        )
    return rows


def study_summary(name: str, trials: Sequence[Any]) -> dict[str, Any]:
    """Counts by state, epochs trained, wall time (first start to last completion) and the best trial."""
    states = Counter(t.state.name.lower() for t in trials)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    epochs = sum(len(t.intermediate_values) for t in trials)
    wall = round((max(ends) - min(starts)).total_seconds()) if starts and ends else math.nan
    return {
        "study": name,
        "trials": len(trials),
        **{s: states.get(s, 0) for s in STATES if states.get(s, 0) or s in ("complete", "pruned")},
        "epochs trained": epochs,
        "wall time (s)": wall,
        # the machine's speed while the study ran: studies that ran at other speeds compare in epochs
        "s per epoch": f"{wall / epochs:.1f}" if epochs else "–",
        "best trial": best.number if best else None,
        "best val acc": best.value if best else math.nan,
        "best params": ", ".join(f"{k}={_shown(v)}" for k, v in sorted(best.params.items())) if best else "–",
        "_best": best,
    }


def best_checkpoint(sweep_dir: Path) -> Path:
    """The best checkpoint of the study's best trial (its run's ``best_model_path``)."""
    name, trials = load_trials(sweep_dir)
    best = study_summary(name, trials)["_best"]
    if best is None:
        raise ValueError(f"{sweep_dir}: study {name!r} has no complete trial")
    ckpt = _metrics(best).get("best_model_path")
    if not ckpt or not Path(ckpt).is_file():
        raise FileNotFoundError(f"{sweep_dir}: trial {best.number} recorded no best checkpoint ({ckpt!r})")
    return Path(ckpt)


def best_test(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / BEST_TEST_DIR
    return read_metrics(path) if (path / "metrics.json").is_file() else None


def search_section(sweep_dirs: Sequence[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    """The record's generated text, and its summary groups (the first study's best trial, tested)."""
    studies = [load_trials(Path(d)) for d in sweep_dirs]
    summaries = [study_summary(name, trials) for name, trials in studies]
    table = pd.DataFrame([{k: v for k, v in s.items() if k != "_best"} for s in summaries])
    text = ["## Studies", "", markdown_table(table), ""]
    if len(summaries) > 1:
        first, other = summaries[0], summaries[1]
        text += [
            f"`{first['study']}` trained {first['epochs trained']} epochs in {first['wall time (s)']} s; "
            f"`{other['study']}` {other['epochs trained']} epochs in {other['wall time (s)']} s "
            f"(ratio {first['epochs trained'] / max(other['epochs trained'], 1):.2f} in epochs, "
            f"{first['wall time (s)'] / max(other['wall time (s)'], 1):.2f} in wall time).",
            "",
        ]
    groups: list[dict[str, Any]] = []
    tested = best_test(Path(sweep_dirs[0]))
    best = summaries[0]["_best"]
    if tested is not None and best is not None:
        acc = float(tested["test/acc"])
        rows = stats.read_predictions(Path(sweep_dirs[0]) / BEST_TEST_DIR)
        ci = stats.pair_interval(stats.correctness([rows])) if rows is not None else (math.nan, math.nan)
        text += [
            f"## The best trial on the test split ({summaries[0]['study']}, trial {best.number})",
            "",
            f"Validation accuracy {best.value:.4f} (best epoch), test accuracy {acc:.4f}, test F1 "
            f"{float(tested.get('test/f1', math.nan)):.4f}, 95 % bootstrap interval over test pairs "
            f"[{ci[0]:.4f}, {ci[1]:.4f}]: its best checkpoint tested once, after the search "
            f"(`{BEST_TEST_DIR}/metrics.json`).",
            "",
        ]
        groups.append(
            {
                "group": f"best trial: {summaries[0]['best params']}",
                "n": 1,
                "seeds": [0],
                "folds": [],
                "runs": {f"trial {best.number}": acc},
                "mean": acc,
                "ci_seeds": [math.nan, math.nan],
                "ci_pairs": list(ci),
                "wall_s": [_seconds(best), _seconds(best)],
                "pairs_per_s": tested.get("test/pairs_per_s"),
                "stopped_by": [],
            }
        )
    rows = [row for name, trials in studies for row in trial_rows(name, trials)]
    text += ["## Every trial", "", markdown_table(pd.DataFrame(rows)), ""]
    return text, groups


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mmdigits.analysis.search", description="print the best trial's best checkpoint"
    )
    p.add_argument("sweep_dir", type=Path)
    a = p.parse_args(argv)
    try:
        print(best_checkpoint(a.sweep_dir))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
